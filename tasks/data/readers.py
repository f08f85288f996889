"""Reading dataset files (JSONL or Parquet) into frames whose `row` column is the line number in the file.

Any problem reading a file is a `DataValidationError` naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.core.errors import DataValidationError

ROW = "row"


def read_rows(path: Path) -> pd.DataFrame:
    """Read a JSONL or Parquet dataset, adding a 1-based `row` column (the line number in a JSONL file)."""
    return records_frame(read_records(Path(path)))


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(row number, record) pairs. Any problem reading the file is a DataValidationError naming it."""
    if not path.is_file():
        raise DataValidationError(f"{path}: file does not exist")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix != ".jsonl":
        raise DataValidationError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
    records = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            line = _decoded(raw, path, number)
            if not line.strip():
                continue  # a blank line holds no record (editors often leave one at the end)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataValidationError(
                    f"{path}: line {number} is a JSON {type(record).__name__}, expected an object"
                )
            records.append((number, _checked_keys(record, path, number)))
    return records


def _decoded(raw: bytes, path: Path, number: int) -> str:
    """A line as text; bad encoding names the line and the byte in it (a byte offset in the file helps nobody)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataValidationError(f"{path}: line {number} is not UTF-8 text "
                                  f"(byte {err.start + 1} of the line is 0x{raw[err.start]:02x})") from None


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors for a corrupt file derive from these
        raise DataValidationError(f"{path}: cannot read Parquet file ({err})") from None
    # Round-trip through JSON so records hold plain JSON values, like rows read from JSONL.
    records = json.loads(frame.to_json(orient="records", force_ascii=False))
    return [(number, _checked_keys(record, path, number)) for number, record in enumerate(records, start=1)]


def _checked_keys(record: dict, path: Path, number: int) -> dict:
    if ROW in record:  # the row number column would silently replace the data's own value
        raise DataValidationError(f"{path}: row {number} has a {ROW!r} key, reserved for row numbers")
    return record


def records_frame(records: list[tuple[int, dict]]) -> pd.DataFrame:
    frame = pd.DataFrame([record for _, record in records])
    frame.insert(0, ROW, pd.Series([number for number, _ in records], dtype="int64"))
    return frame
