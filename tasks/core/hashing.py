"""File digests that identify inputs in cache keys and lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path


def md5_file(path: Path) -> str:
    """The md5 of a file's bytes: the digest DVC records, so the two can be compared."""
    return _digest(path, hashlib.md5())


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as `sha256sum` prints it: what names a model file in lineage."""
    return _digest(path, hashlib.sha256())


def _digest(path: Path, digest) -> str:
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
