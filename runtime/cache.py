"""Where edgesd keeps what it can recompute: compiled models and file-verification stamps."""

import os
from pathlib import Path


def cache_root() -> Path:
    """$EDGESD_CACHE, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache) / edgesd."""
    if os.environ.get("EDGESD_CACHE"):  # set and not empty (empty would mean the current folder)
        return Path(os.environ["EDGESD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgesd"
