"""Reference forwards of the conv family: ops by rule name, and layers by kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FORWARD: dict[str, Callable[..., Any]] = {}
LAYERS: dict[str, Callable[..., Any]] = {}
