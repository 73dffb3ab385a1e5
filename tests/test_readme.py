"""The README's code is run, so it stays true."""

import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_quick_start_is_two_commands():
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        after = README.split(marker, 1)[1]
        command = re.search(r"```sh\n(.*?)\n```", after, flags=re.S).group(1)
        assert command.count("\n") == 0, f"{marker}: one command line expected, got {command!r}"
        assert command.startswith("python3 -m venv .venv && ")
