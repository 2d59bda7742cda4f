"""The one folder where AutoSculpt keeps what it can rebuild: trained checkpoints and lowered programs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$AUTOSCULPT_CACHE_DIR``, default ``~/.cache/autosculpt``."""
    return Path(os.environ.get("AUTOSCULPT_CACHE_DIR", Path.home() / ".cache" / "autosculpt"))
