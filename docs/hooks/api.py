"""The API pages' two helpers, loaded by ``mkdocs.yml``.

* :class:`RestMarkup`, a griffe extension: the docstrings write ``code`` and
  :func:`~manual_bp.nn.serial` as Sphinx does, the site is Markdown, so each literal becomes a
  code span and each role its target's name in one (the last component with ``~``).
* :func:`on_page_markdown`, an MkDocs hook: a registered rule is a ``Rule`` instance whose
  documentation is the docstrings of its ``fwd``, ``jvp`` and ``bwd``; the line
  ``<!-- rules -->`` of a page becomes the package's directive (the names that are not
  rules) and one section per rule of ``manual_bp.RULES``, each with
  those three docstrings and the anchor ``manual_bp.rules.NAME``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", flags=re.S)
RULES_MARKER = "<!-- rules -->"


def to_markdown(text: str) -> str:
    """A docstring's reST roles and double-backtick literals as Markdown code spans."""

    def role(match: re.Match[str]) -> str:
        tilde, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"

    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", _ROLE.sub(role, text))


class RestMarkup(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)


def rule_sections() -> str:
    """``manual_bp.rules``' names other than the rules, then one section per registered rule:
    its family module and its three docstrings."""
    import manual_bp
    from manual_bp import rules

    others = [n for n in rules.__all__ if not isinstance(getattr(rules, n), manual_bp.Rule)]
    parts = [
        "::: manual_bp.rules\n    options:\n      members:\n"
        + "".join(f"        - {n}\n" for n in others),
        "## The registered rules\n",
    ]
    for name, rule in sorted(manual_bp.RULES.items()):
        family = rule.fwd.__module__
        parts.append(f"### `{name}` {{ #manual_bp.rules.{name} }}\n")
        parts.append(f"`manual_bp.rules.{name}`, defined in `{family}`.\n")
        for half in ("fwd", "jvp", "bwd"):
            fn = getattr(rule, half)
            doc = inspect.getdoc(fn) if fn is not None else None
            text = to_markdown(doc) if doc else "(none)"
            parts.append(f"**{half}** — {text}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """The rules marker replaced by :func:`rule_sections`; every other page unchanged."""
    if RULES_MARKER not in markdown:
        return markdown
    return markdown.replace(RULES_MARKER, rule_sections())
