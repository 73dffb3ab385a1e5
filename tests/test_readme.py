"""The README's code and the site's tutorial and how-to guides (``docs/how-to/``) are run, so
they stay true.

Every ```python block of a page runs, in order, in one namespace per page (a page builds on
its earlier blocks, as a reader pasting them into one session would); ```py blocks are shown,
not run (a module of the user's own, a pytest file).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HOW_TO = sorted((ROOT / "docs" / "how-to").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "docs" / "tutorial.md", *HOW_TO]
# The how-to guides compile a network or two each (about 100 s together on 2 busy cores).
PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p in HOW_TO else p for p in PAGES]


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", PARAMS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page):
    text = page.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if page.name in ("README.md", "tutorial.md"):
        assert blocks, f"{page.name} has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, page.relative_to(ROOT).as_posix(), "exec"), namespace)


def test_the_scan_finds_blocks():
    text = "a\n```python\nx = 1\n```\n```py\nnot run\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]
    assert {"tutorial.md", "README.md"} <= {p.name for p in PAGES}


def test_quick_start_is_two_commands():
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        after = README.split(marker, 1)[1]
        command = re.search(r"```sh\n(.*?)\n```", after, flags=re.S).group(1)
        assert command.count("\n") == 0, f"{marker}: one command line expected, got {command!r}"
        assert command.startswith("python3 -m venv .venv && ")
