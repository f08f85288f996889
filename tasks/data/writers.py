"""Writing datasets: one JSONL writer, with stable bytes so that DVC's md5 of regenerated data does not move."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from models.saving import write_atomically


def write_text(path: Path, text: str) -> Path:
    """UTF-8 text with '\\n' endings, written aside and renamed: a crash never leaves half a file."""
    return write_atomically(Path(path), lambda partial: partial.write_text(text, encoding="utf-8", newline="\n"))


def write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    """One JSON object per line, keys in the rows' order, non-ASCII kept as is, written atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
