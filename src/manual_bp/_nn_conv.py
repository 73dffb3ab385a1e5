"""Layers of the conv family (re-exported by :mod:`manual_bp.nn`)."""

from __future__ import annotations

__all__: list[str] = []
