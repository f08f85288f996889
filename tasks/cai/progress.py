"""Resumable progress: an append-only JSONL file of finished records, one per key, flushed per record.

A rerun opens the same file, skips every key already in it, and appends the rest. A process killed while
writing leaves at most one half-written last line; it is cut off on open and that record is made again.
A broken line anywhere else means the file was damaged by something else, which is an error, not a resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

from tasks.core.errors import AlignflowError


class ProgressError(AlignflowError):
    """A progress file is damaged somewhere other than its last line."""


class ProgressLog:
    def __init__(self, path: Path, key: Callable[[dict], Hashable]):
        self.path = Path(path)
        self._key = key
        self._records: dict[Hashable, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: Hashable) -> dict:
        return self._records[key]

    def __iter__(self) -> Iterator[dict]:
        return iter(self._records.values())

    def append(self, record: dict) -> None:
        """Write one finished record and flush it, so a crash right after keeps it."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            handle.flush()
        self._records[self._key(record)] = record

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line has no newline yet
        if len(complete) != len(data):
            with self.path.open("r+b") as handle:  # cut it off, or the next append would glue onto it
                handle.truncate(len(complete))
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProgressError(f"{self.path}: line {number} is not valid JSON ({err.msg}); delete the file "
                                    "to start this step over") from None
            self._records[self._key(record)] = record

    def fill(self, items: list, key: Callable, compute: Callable[[list], list[dict]], chunk: int) -> int:
        """Make the records of `items` that are missing, `chunk` items per `compute` call; returns how many.

        Chunks are fixed slices of `items`, whatever is already done: a chunk with a missing record is
        computed whole (only its missing records are written), so every record sees the same batch, and the
        same floats, as in an uninterrupted run. Chunks with nothing missing are skipped.
        """
        written = 0
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            if all(key(item) in self for item in batch):
                continue
            for item, record in zip(batch, compute(batch), strict=True):
                if key(item) not in self:
                    self.append(record)
                    written += 1
        return written
