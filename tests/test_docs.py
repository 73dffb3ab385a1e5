"""The documentation site: every public name documented and on the API pages, the version in
one place, and (slow) the strict build with an anchor for every public name.

The public modules are ``tests/public_api.py``'s. A name's docstring is read as the site reads
it, statically with griffe (so a constant's docstring is the string below its assignment); a
registered rule is a ``Rule`` instance, documented by the docstrings of its ``fwd``, ``jvp`` and
``bwd``, which the rules page shows (``docs/hooks/api.py``).
"""

from __future__ import annotations

import functools
import http.server
import importlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import manual_bp
from manual_bp import cli

griffe = pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]')")

import public_api  # noqa: E402  (after the skip: tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RULES_MARKER = "<!-- rules -->"


def public_names() -> list[tuple[str, str]]:
    """(module, name) for every name of every public module's ``__all__``."""
    return [(m, n) for m in public_api.PUBLIC_MODULES for n in importlib.import_module(m).__all__]


@pytest.fixture(scope="module")
def packages():
    return {p: griffe.load(p, search_paths=[str(ROOT / "src")]) for p in ("manual_bp", "reference")}


def undocumented(packages, module: str, name: str) -> str | None:
    """Why ``module.name`` has no documentation, or None when it has."""
    value = getattr(importlib.import_module(module), name)
    if isinstance(value, manual_bp.Rule):
        missing = [h for h in ("fwd", "jvp", "bwd") if getattr(value, h) is not None]
        missing = [h for h in missing if not (getattr(value, h).__doc__ or "").strip()]
        return f"the rule's {', '.join(missing)} without a docstring" if missing else None
    if isinstance(value, ModuleType):
        return None if (value.__doc__ or "").strip() else "a module without a docstring"
    root, _, rest = module.partition(".")
    node = packages[root][rest] if rest else packages[root]
    try:
        member = node[name]
        doc = member.docstring
    except (KeyError, griffe.AliasResolutionError) as error:
        return f"not found by griffe ({type(error).__name__})"
    return None if doc is not None and doc.value.strip() else "no docstring"


def test_every_public_name_has_a_docstring(packages):
    missing = [
        f"{m}.{n}: {why}" for m, n in public_names() if (why := undocumented(packages, m, n))
    ]
    assert not missing, "public names without documentation:\n" + "\n".join(missing)


def test_the_docstring_check_can_fail(packages, monkeypatch):
    """A rule whose bwd lost its docstring, and a name griffe cannot find, are reported."""
    rule = manual_bp.rules.tanh
    monkeypatch.setattr(rule.bwd, "__doc__", None)
    assert undocumented(packages, "manual_bp.rules", "tanh") == "the rule's bwd without a docstring"
    monkeypatch.setattr(manual_bp.nn, "not_there", 1, raising=False)
    assert undocumented(packages, "manual_bp.nn", "not_there").startswith("not found by griffe")


def directives() -> dict[str, str]:
    """Each ``::: module`` directive of the API pages, mapped to its page."""
    found = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for target in re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M):
            found[target] = page.name
        if RULES_MARKER in page.read_text(encoding="utf-8"):
            found["manual_bp.rules"] = page.name  # the hook writes the directive and the rules
    return found


def test_every_public_module_has_an_api_page():
    """A module directive renders every name of its ``__all__``; the slow build checks that."""
    missing = sorted(set(public_api.PUBLIC_MODULES) - set(directives()))
    assert not missing, f"public modules missing from docs/reference/: {missing}"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    pages = [p for p in pages if not p.startswith(("hooks/", "assets/"))]
    assert pages, "no pages found"
    missing = [p for p in pages if f" {p}\n" not in nav and f"- {p}\n" not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_one_version(capsys):
    """pyproject.toml is the version's one source: the installed metadata, ``__version__``,
    ``manual-bp --version`` and CITATION.cff all say it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = pyproject["project"]["version"]
    assert importlib.metadata.version("manual_bp") == version == manual_bp.__version__
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"manual-bp {version}\n"
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^version: (\S+)$", citation, re.M).group(1) == version


# --- the built site (slow) --------------------------------------------------------------------


def build_site(out: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the checkout into ``out``."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    proc = build_site(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def anchors(site: Path) -> set[str]:
    """Every element id of the site's reference pages."""
    ids: set[str] = set()
    for page in (site / "reference").rglob("*.html"):
        ids |= set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))
    return ids


def expected_anchor(module: str, name: str) -> str:
    value = getattr(importlib.import_module(module), name)
    return value.__name__ if isinstance(value, ModuleType) else f"{module}.{name}"


@pytest.mark.slow
def test_every_public_name_is_on_the_api_pages(site):
    ids = anchors(site)
    missing = sorted(a for m, n in public_names() if (a := expected_anchor(m, n)) not in ids)
    assert not missing, f"public names without an entry on the API pages: {missing}"
    assert "manual_bp.nn.not_there" not in ids  # the anchors are the rendered ones, not any


# --- the built site in a real browser (slow) --------------------------------------------------

CHROMIUM = next((c for c in ("chromium", "chromium-browser") if shutil.which(c)), None)
PAGES = {  # page: (its title, a heading on it)
    "": ("manual_bp", "The two commands"),
    "tutorial/": ("Tutorial", "The backward pass"),
    "reference/rules/": ("Rules", "manual_bp.rules"),
}


@pytest.fixture(scope="module")
def served(site):
    """The built site on 127.0.0.1, at a free port, for the module's tests."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def chromium(*args: str) -> str:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--virtual-time-budget=10000", "--window-size=1280,1600", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: .ci/run installs Debian's chromium")
@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: p or "home")
def test_the_page_renders_in_a_browser(served, page, tmp_path):
    """Each page, after its JavaScript ran: its title and headings, a formula typeset by KaTeX
    (the site's own copy, offline), the search box, and no 404."""
    title, heading = PAGES[page]
    url = served + page
    dom = chromium("--dump-dom", url)
    shot = tmp_path / f"{page.strip('/').replace('/', '_') or 'home'}.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000, "an empty screenshot"
    assert re.search(rf"<title>{re.escape(title)}\b", dom), dom[:500]
    assert heading in " ".join(re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", dom, flags=re.S))
    assert 'class="katex' in dom, "no formula typeset"
    assert 'class="md-search__input"' in dom, "no search box"
    assert "404" not in re.search(r"<title>(.*?)</title>", dom).group(1)
