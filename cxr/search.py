"""Hyper-parameter search helpers for the Optuna sweeper (``hparams_search=...``)."""
from __future__ import annotations

from pathlib import Path


def sqlite_storage(path: str) -> str:
    """``sqlite:///<absolute path>`` for an Optuna study, creating its folder (SQLite does not)."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
