"""Where haq keeps what it computes once: trained default models, calibration statistics,
Hessian traces, measured hardware profiles.

The folder is the platform's user cache dir (``platformdirs``), or ``$HAQ_CACHE_DIR`` when
set (tests and CI point it at a temporary folder). Everything in it can be deleted: it is
recomputed on the next use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir(*parts: str) -> Path:
    """The cache folder (created), or a sub-folder of it."""
    root = os.environ.get("HAQ_CACHE_DIR") or platformdirs.user_cache_dir("haq", appauthor=False)
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(obj: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able object: the cache key of a recipe or a config."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
