"""Files written atomically: the one writer behind checkpoints, metrics, plots and JSON reports.

:func:`atomic_write` writes into a new temporary file beside the target, created exclusively
(so a link planted under that name is never followed), flushes and fsyncs it, renames it over
the target (a symbolic link at the target is replaced, not written through) and fsyncs the
folder, so the rename itself is durable. A crash at any point leaves the old file whole, and
at worst a temporary file ``.NAME.*.tmp`` beside it, which :func:`remove_temporaries` clears.
The new file gets the permissions an ordinary ``open`` would give it: ``0o666`` less the umask.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "remove_temporaries"]

_MODES = ("w", "wb")


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], object], mode: str = "w"
) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``, then rename it over ``path``.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"`` (bytes). The temporary file is
    ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder; it is removed if ``write`` raises (even
    ``KeyboardInterrupt``), and renamed over ``path`` only after flush and fsync.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write: mode must be one of {_MODES}, got {mode!r}")
    path = Path(path)
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would hide it from others
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def remove_temporaries(folder: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` for ``names`` (a
    process killed in the middle of a write leaves one behind)."""
    for name in names:
        for stale in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            stale.unlink(missing_ok=True)
