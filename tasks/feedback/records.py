"""The two records of human feedback: a comparison pair shown to people, and one person's label on it.

A pair shows answer A and answer B. Which model wrote which, and whether the sampled order was swapped to get
A/B, is recorded on the pair (`source_a`, `source_b`, `swapped`), so a label on a position always maps back to
the answer and the model it came from. Labels are appended one per line and never rewritten: a changed label is
a newer line for the same pair and annotator, and the newest one counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from models.prompting import Prompt, as_messages
from tasks.core.errors import DataValidationError
from tasks.data.conversations import prompt_key
from tasks.data.readers import read_records
from tasks.data.writers import write_jsonl

Choice = Literal["A", "B", "tie", "skip"]
CHOICES: tuple[str, ...] = ("A", "B", "tie", "skip")
PAIRS_FILE = "pairs.jsonl"


class Pair(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pair_id: str
    prompt: Prompt  # text, or conversational turns as the dataset holds them
    answer_a: str
    answer_b: str
    source_a: str
    source_b: str
    swapped: bool  # True when the first sampled answer is shown as B


class Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pair_id: str
    choice: Choice
    annotator: str
    note: str = ""
    labelled_at: str = ""


def pair_id(index: int, prompt: Prompt) -> str:
    """Stable and readable: the position in the export and a hash of the prompt (`0007-3fa2c1d9`)."""
    return f"{index:04d}-{hashlib.sha256(prompt_key(prompt).encode()).hexdigest()[:8]}"


def prompt_text(prompt: Prompt) -> str:
    """What a person reads: the request itself, or each turn of a conversation on its own line."""
    if isinstance(prompt, str):
        return prompt
    turns = as_messages(prompt)
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)


def write_pairs(pairs: list[Pair], path: Path) -> Path:
    return write_jsonl((pair.model_dump() for pair in pairs), path)


def read_pairs(path: Path) -> dict[str, Pair]:
    """The pairs of an export file by id; a malformed line or a repeated id names the file and line."""
    pairs: dict[str, Pair] = {}
    for line, record in read_records(Path(path)):
        try:
            pair = Pair.model_validate(record)
        except ValidationError as err:
            raise DataValidationError(f"{path}: line {line} is not a comparison pair ({_first_error(err)})") from None
        if pair.pair_id in pairs:
            raise DataValidationError(f"{path}: line {line} repeats pair_id {pair.pair_id!r}")
        pairs[pair.pair_id] = pair
    return pairs


def read_labels(path: Path) -> list[Label]:
    """Every label line of our JSONL, in file order (later lines revise earlier ones)."""
    labels = []
    for line, record in read_records(Path(path)):
        try:
            labels.append(Label.model_validate(record))
        except ValidationError as err:
            raise DataValidationError(f"{path}: line {line} is not a label ({_first_error(err)}); expected "
                                      f"pair_id, choice (one of {', '.join(CHOICES)}) and annotator") from None
    return labels


def latest_labels(labels: list[Label]) -> dict[tuple[str, str], Label]:
    """The newest label of each (pair, annotator): a revision replaces the earlier choice."""
    return {(label.pair_id, label.annotator): label for label in labels}


class LabelLog:
    """An append-only labels file: each label is written, flushed and fsynced before it is acknowledged, so a
    crash or a closed tab loses nothing, and reopening the file continues where it stopped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels = read_labels(self.path) if self.path.is_file() else []
        _end_with_newline(self.path)

    def append(self, label: Label) -> Label:
        stamped = label.model_copy(update={"labelled_at": label.labelled_at or _now()})
        with self.path.open("a", encoding="utf-8", newline="\n") as out:
            out.write(json.dumps(stamped.model_dump(), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.labels.append(stamped)
        return stamped

    def current(self, annotator: str) -> dict[str, Label]:
        """This annotator's newest label per pair."""
        return {pid: label for (pid, who), label in latest_labels(self.labels).items() if who == annotator}


def _end_with_newline(path: Path) -> None:
    """A file edited by hand may lack its last newline; the next label must still start on its own line."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a", encoding="utf-8") as out:
            out.write("\n")


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "record"
    return f"{where}: {first['msg']}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
