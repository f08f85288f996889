"""The labelling tools' formats: what we hand to Label Studio and Argilla, and how their exports read back.

Label Studio ("Human Preferences collection for RLHF" template): a `<Pairwise>` control over `$answer1` and
`$answer2`; tasks are `{"data": {"prompt", "answer1", "answer2", "pair_id"}}`; an export is the list of tasks,
each with `annotations[].result[]` items `{"type": "pairwise", "value": {"selected": "left" | "right"}}`
(left is answer1; from_name and to_name are both the control's name) and `was_cancelled` for a skipped task.
Checked against a Label Studio 1.23.2 server: tests/test_labelstudio.py.

Argilla 2.x (`rg.Settings.for_response_ranking()`): fields `instruction`, `response1`, `response2` and a
`RankingQuestion` named `ranking` over `["response1", "response2"]`; records carry our pair id as their `id`.
An export (`dataset.records.to_list(flatten=True)`, one record per JSONL line) holds `ranking.responses` (one
ranking per annotator, best first), `ranking.responses.users` and `ranking.responses.status`.

A1/answer1/response1 is always our answer A. Every reader returns our `Label`s and checks each item against the
exported pairs: an unknown pair id, an unknown choice or a missing result names the file and the item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

from tasks.core.errors import DataValidationError
from tasks.data.readers import read_records
from tasks.data.writers import write_jsonl, write_text
from tasks.feedback.records import Label, Pair, prompt_text, read_labels

Format = Literal["alignflow", "labelstudio", "argilla"]
LABELSTUDIO_TASKS, LABELSTUDIO_CONFIG, ARGILLA_RECORDS = ("labelstudio_tasks.json", "labelstudio_config.xml",
                                                         "argilla_records.jsonl")
_LEFT_RIGHT = {"left": "A", "right": "B"}
_RANKED_FIRST = {"response1": "A", "response2": "B"}


# ------------------------------------------------------------------------------------------------- writing


def write_labelstudio(pairs: list[Pair], folder: Path, title: str) -> list[Path]:
    """The import tasks and the labelling config that shows them."""
    tasks = [{"data": {"pair_id": p.pair_id, "prompt": prompt_text(p.prompt), "answer1": p.answer_a,
                       "answer2": p.answer_b}}
             for p in pairs]
    config = f"""<View>
  <Header value={quoteattr(title)}/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Which answer is better? Click it (skip the task when neither can be chosen)."/>
  <Pairwise name="comparison" toName="answer1,answer2" selectionStyle="background-color: #d7f5dd"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>
"""
    return [write_text(folder / LABELSTUDIO_TASKS, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"),
            write_text(folder / LABELSTUDIO_CONFIG, config)]


def write_argilla(pairs: list[Pair], folder: Path) -> Path:
    """Records for `dataset.records.log(...)` on a dataset made with `Settings.for_response_ranking()`."""
    return write_jsonl(({"id": p.pair_id, "instruction": prompt_text(p.prompt), "response1": p.answer_a,
                         "response2": p.answer_b} for p in pairs), folder / ARGILLA_RECORDS)


# ------------------------------------------------------------------------------------------------- reading


def detect_format(path: Path) -> Format:
    """Label Studio exports JSON (a list of tasks); Argilla and our page write JSONL."""
    path = Path(path)
    if path.suffix == ".json":
        return "labelstudio"
    records = read_records(path)
    if not records:
        raise DataValidationError(f"{path}: holds no labels")
    first = records[0][1]
    if "choice" in first:
        return "alignflow"
    if "ranking.responses" in first or "responses" in first:
        return "argilla"
    raise DataValidationError(f"{path}: line {records[0][0]} is neither one of our labels (pair_id, choice) nor an "
                              "Argilla record (ranking.responses); pass --format")


def read_export(path: Path, pairs: dict[str, Pair], kind: Format | None = None) -> list[Label]:
    """The labels in a labelling tool's export, every one on a pair of the export file."""
    kind = kind or detect_format(path)
    if kind == "alignflow":
        labels = read_labels(path)
        for line, label in enumerate(labels, start=1):
            _known(path, f"line {line}", label.pair_id, pairs)
        return labels
    if kind == "labelstudio":
        return _labelstudio_labels(Path(path), pairs)
    if kind == "argilla":
        return _argilla_labels(Path(path), pairs)
    raise ValueError(f"unknown export format {kind!r}; expected alignflow, labelstudio or argilla")


def _labelstudio_labels(path: Path, pairs: dict[str, Pair]) -> list[Label]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataValidationError(f"{path}: not a Label Studio JSON export ({err})") from None
    if not isinstance(tasks, list):
        raise DataValidationError(f"{path}: a Label Studio export is a JSON list of tasks, got {type(tasks).__name__}")
    labels = []
    for number, task in enumerate(tasks, start=1):
        item = f"task {number}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        data = task.get("data") if isinstance(task, dict) else None
        pid = _known(path, item, (data or {}).get("pair_id"), pairs)
        for annotation in task.get("annotations") or []:
            annotator = _annotator(annotation.get("completed_by"))
            if annotation.get("was_cancelled"):
                labels.append(Label(pair_id=pid, choice="skip", annotator=annotator))
                continue
            selected = [r.get("value", {}).get("selected") for r in annotation.get("result") or []
                        if r.get("type") == "pairwise"]
            if not selected:
                raise DataValidationError(f"{path}: {item}, annotation {annotation.get('id', '?')}: missing result "
                                          "(expected a pairwise result with value.selected left or right)")
            if selected[-1] not in _LEFT_RIGHT:
                raise DataValidationError(f"{path}: {item}: unknown choice {selected[-1]!r}; expected left or right")
            labels.append(Label(pair_id=pid, choice=_LEFT_RIGHT[selected[-1]], annotator=annotator))
    return labels


def _argilla_labels(path: Path, pairs: dict[str, Pair]) -> list[Label]:
    labels = []
    for line, record in read_records(path):
        item = f"line {line}"
        pid = _known(path, item, record.get("id"), pairs)
        for ranking, user, status in _argilla_responses(record):
            if status == "discarded":
                labels.append(Label(pair_id=pid, choice="skip", annotator=user))
                continue
            if status == "draft":
                continue  # not submitted yet: not a label
            first = _ranked_first(ranking)
            if first not in _RANKED_FIRST:
                raise DataValidationError(f"{path}: {item}: unknown choice {first!r} ranked first by {user}; "
                                          "expected response1 or response2")
            labels.append(Label(pair_id=pid, choice=_RANKED_FIRST[first], annotator=user))
    return labels


def _argilla_responses(record: dict) -> list[tuple[object, str, str]]:
    """(ranking, user, status) per annotator, from a flattened record or from nested `responses.ranking`."""
    if "ranking.responses" in record:
        rankings = record.get("ranking.responses") or []
        users = record.get("ranking.responses.users") or [f"annotator-{i + 1}" for i in range(len(rankings))]
        statuses = record.get("ranking.responses.status") or ["submitted"] * len(rankings)
        return [(r, str(u), str(s)) for r, u, s in zip(rankings, users, statuses, strict=False)]
    nested = (record.get("responses") or {}).get("ranking") or []
    return [(r.get("value"), str(r.get("user_id", f"annotator-{i + 1}")), str(r.get("status", "submitted")))
            for i, r in enumerate(nested)]


def _ranked_first(ranking) -> object:
    """The response ranked best: rankings read back as values best first, or as {value, rank} items."""
    if not isinstance(ranking, list) or not ranking:
        return ranking
    if all(isinstance(item, dict) for item in ranking):
        return min(ranking, key=lambda item: item.get("rank", 0)).get("value")
    return ranking[0]


def _known(path: Path, item: str, pid: object, pairs: dict[str, Pair]) -> str:
    if pid is None:
        raise DataValidationError(f"{path}: {item} has no pair id (expected the pair_id of the export)")
    if str(pid) not in pairs:
        raise DataValidationError(f"{path}: {item}: pair id {pid!r} is not in the export file")
    return str(pid)


def _annotator(completed_by) -> str:
    """Label Studio writes the annotator as a user id, or as a user object with an email."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "unknown")
    return "unknown" if completed_by is None else str(completed_by)
