"""Great Expectations suites for the pipeline's datasets, and what happens to rows that fail them.

Design:

* Three dataset kinds, in TRL formats: `sft` (prompt, completion; or messages), `preference` (prompt,
  chosen, rejected) and `prompt` (prompt, plus any extra columns). `DATASET_KINDS` maps each dataset name to
  its kind. Each value may be text or conversational turns (`conversation_checks` derives their checks).
* One table, `_CHECKS`, says which checks apply to which kind; each check builds real GX expectations. The
  three suites are never written out by hand, so they cannot drift apart.
* Checks GX cannot express directly (the turns, chosen != rejected, token length, uniqueness of lists) are
  computed in pandas first as derived columns (`<column>_roles`, `chosen_equals_rejected`, `<column>_tokens`,
  `<column>_key`, ...) and then checked by ordinary GX expectations, so every verdict, count and offending row
  comes from one GX validation result.
* Every row carries a 1-based `row` column (the line number in a JSONL file) that GX reports as the index of
  offending rows, so a message can say "row 17" and the user can open the file at that line.
* Failures are either row-level (a bad value in some rows: those rows can be quarantined) or table-level
  (a missing column, zero rows, an unreadable file, or a check GX could not pin to rows): nothing to
  quarantine, so they always stop the flow.
* One ephemeral GX context per `validate_files` call; progress bars and GX logging are turned off while it
  runs. Importing this module does nothing but define things.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from models.prompting import Prompt
from tasks.core.errors import DataValidationError
from tasks.core.request_kinds import KIND_COLUMN, REQUEST_KINDS
from tasks.data import conversation_checks as turns
from tasks.data.readers import ROW, read_records, records_frame
from tasks.data.validation_report import Check, ExpectationFailure, FileReport, ValidationReport, describe
from tasks.data.writers import write_jsonl, write_text

DATASET_KINDS: dict[str, str] = {
    "sft_train": "sft",
    "sft_eval": "sft",
    "preferences_train": "preference",
    "preferences_eval": "preference",
    "eval_prompts": "prompt",
    "red_team_prompts": "prompt",
}
TRAINING_FILES = ("sft_train", "preferences_train")
EVAL_FILES = ("sft_eval", "preferences_eval", "eval_prompts")

# Required text columns per kind; the first is the prompt, the rest are responses.
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}
MESSAGES_COLUMNS = ("messages",)  # SFT as whole dialogues
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
FAILED_EXPECTATIONS = "_failed_expectations"
_EXAMPLE_ROWS = 3
_MAX_VALUE_CHARS = 80
_EXAMPLE_TURNS = 8
_RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]}


# ------------------------------------------------------------------------------------------------- reading


# ---------------------------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class _Spec:
    """Everything the checks of one file depend on."""

    name: str
    kind: str
    columns: tuple[str, ...]  # the required columns; the first is the prompt (or the dialogue)
    max_length: int
    training_prompts: frozenset[str] | None  # None: not an eval file, or no training files to compare with

    @property
    def length_columns(self) -> tuple[str, ...]:
        """Columns whose token length is checked: the responses, or the prompt alone for prompt files."""
        return self.columns[1:] or self.columns


class _Expectation:
    """A GX expectation by class name and arguments, built when GX runs: importing GX takes seconds, which every
    process importing this module (a stage on a worker, under accelerate) would pay without validating."""

    def __init__(self, name: str, **arguments: Any):
        self.name, self.arguments = name, arguments

    @property
    def expectation_type(self) -> str:
        """GX's name for it in results and reports: ExpectColumnToExist is expect_column_to_exist."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()

    def build(self):
        from great_expectations import expectations

        return getattr(expectations, self.name)(**self.arguments)


@dataclass(frozen=True)
class _Planned:
    """A GX expectation plus what this module needs to know to act on its result."""

    expectation: _Expectation
    column: str | None
    description: str
    needs: tuple[str, ...] = ()  # source columns; skipped when one is missing (its ExpectColumnToExist fails)
    row_level: bool = True
    keep_first: bool = False  # duplicates: the first copy is fine, only later copies are bad


def _columns_exist(spec: _Spec) -> Iterator[_Planned]:
    for column in spec.columns:
        yield _Planned(_Expectation("ExpectColumnToExist", column=column), column,
                       f"column '{column}' is present", row_level=False)


def _has_rows(spec: _Spec) -> Iterator[_Planned]:
    yield _Planned(_Expectation("ExpectTableRowCountToBeBetween", min_value=1), None,
                   "the file has at least one row", row_level=False)


def _not_null(spec: _Spec) -> Iterator[_Planned]:
    for column in spec.columns:
        yield _Planned(_Expectation("ExpectColumnValuesToNotBeNull", column=column), column,
                       f"'{column}' is never null or missing", needs=(column,))


def _well_formed(spec: _Spec) -> Iterator[_Planned]:
    """Text or turns, and turns in TRL's order; each derived column holds what is wrong, or null."""
    for check in turns.TURN_CHECKS:
        for column in spec.columns:
            derived = turns.problem_column(column, check)
            yield _Planned(_Expectation("ExpectColumnValuesToBeNull", column=derived), derived,
                           turns.description(column, check), needs=(column,))


def _not_blank(spec: _Spec) -> Iterator[_Planned]:
    # Turns pass this regex (GX matches their str()); their content has its own check.
    for column in (column for column in spec.columns if turns.position(column) != "dialogue"):
        yield _Planned(_Expectation("ExpectColumnValuesToMatchRegex", column=column, regex=r"\S"), column,
                       f"'{column}' is not empty or whitespace-only", needs=(column,))


def _chosen_differs(spec: _Spec) -> Iterator[_Planned]:
    yield _Planned(_Expectation("ExpectColumnValuesToBeInSet", column=CHOSEN_EQUALS_REJECTED, value_set=[False]),
                   CHOSEN_EQUALS_REJECTED, "'chosen' differs from 'rejected'", needs=("chosen", "rejected"))


def _fits_max_length(spec: _Spec) -> Iterator[_Planned]:
    for column in spec.length_columns:
        text = {"prompt": "format_prompt(prompt)",
                "messages": "format_prompt(messages[:-1]) + messages[-1] + EOS"}.get(
                    column, f"format_prompt(prompt) + {column} + EOS")
        yield _Planned(
            _Expectation("ExpectColumnValuesToBeBetween", column=_tokens(column), max_value=spec.max_length),
            _tokens(column), f"{text} is at most {spec.max_length} tokens",
            needs=tuple(dict.fromkeys((spec.columns[0], column))),
        )


def _unique(spec: _Spec) -> Iterator[_Planned]:
    # GX cannot hash lists, so it compares the canonical keys. It wants two or more columns for the compound
    # check; prompt files have one. A null key (a missing or malformed value) is reported by its own check,
    # so a row with one is not judged here.
    keys = [turns.key_column(column) for column in spec.columns]
    expectation = (
        _Expectation("ExpectCompoundColumnsToBeUnique", column_list=keys, ignore_row_if="any_value_is_missing")
        if len(keys) > 1 else _Expectation("ExpectColumnValuesToBeUnique", column=keys[0]))
    yield _Planned(expectation, ",".join(spec.columns), f"no two rows repeat {', '.join(spec.columns)}",
                   needs=spec.columns, keep_first=True)


def _no_leakage(spec: _Spec) -> Iterator[_Planned]:
    if spec.training_prompts is None:
        return
    column = spec.columns[0]
    expectation = _Expectation("ExpectColumnValuesToNotBeInSet", column=turns.PROMPT_KEY,
                               value_set=sorted(spec.training_prompts))
    yield _Planned(expectation, column, "the prompt is not in the training data", needs=(column,))


def _request_kind(spec: _Spec) -> Iterator[_Planned]:
    yield _Planned(_Expectation("ExpectColumnValuesToBeInSet", column=KIND_COLUMN, value_set=list(REQUEST_KINDS)),
                   KIND_COLUMN, f"'{KIND_COLUMN}', where the file has it, is one of {', '.join(REQUEST_KINDS)}",
                   needs=(KIND_COLUMN,))


_ALL_KINDS = frozenset(KIND_COLUMNS)
# Which checks apply to which kind. Leakage applies to every kind but only yields for eval files.
_CHECKS: tuple[tuple[Callable[[_Spec], Iterable[_Planned]], frozenset[str]], ...] = (
    (_columns_exist, _ALL_KINDS),
    (_has_rows, _ALL_KINDS),
    (_not_null, _ALL_KINDS),
    (_well_formed, _ALL_KINDS),
    (_not_blank, _ALL_KINDS),
    (_chosen_differs, frozenset({"preference"})),
    (_fits_max_length, _ALL_KINDS),
    (_unique, _ALL_KINDS),
    (_no_leakage, _ALL_KINDS),
    (_request_kind, _ALL_KINDS),
)


def _plan(spec: _Spec, present: set[str], checks: frozenset[Callable]) -> list[_Planned]:
    """The expectations for one file among `checks`, minus those about missing columns (GX could only report an
    error)."""
    planned = [item for build, kinds in _CHECKS if build in checks and spec.kind in kinds for item in build(spec)]
    return [item for item in planned if present.issuperset(item.needs)]


def _tokens(column: str) -> str:
    return f"{column}_tokens"


def _columns(kind: str, present: set[str]) -> tuple[str, ...]:
    """The required columns: an SFT file with `messages` and neither prompt nor completion is dialogues."""
    if kind == "sft" and "messages" in present and not present & {"prompt", "completion"}:
        return MESSAGES_COLUMNS
    return KIND_COLUMNS[kind]


def _with_derived_columns(frame: pd.DataFrame, spec: _Spec, tokenizer,
                          format_prompt: Callable[[Prompt], str]) -> pd.DataFrame:
    """Add the columns GX checks for the turns, keys, chosen != rejected and token length."""
    frame = frame.copy()
    if frame.empty:  # an empty file has no keys to take columns from; report zero rows, not missing columns
        for column in spec.columns:
            frame[column] = pd.Series(dtype=object)
    for name, values in turns.derived_columns(frame, spec.columns).items():
        frame[name] = values
    if {"chosen", "rejected"} <= set(frame.columns) and spec.kind == "preference":
        frame[CHOSEN_EQUALS_REJECTED] = [turns.same_response(c, r)
                                         for c, r in zip(frame["chosen"], frame["rejected"], strict=True)]
    for column in spec.length_columns if tokenizer is not None else ():
        if {spec.columns[0], column} <= set(frame.columns):
            frame[_tokens(column)] = _token_lengths(frame, column, tokenizer, format_prompt)
    return frame


def _token_lengths(frame: pd.DataFrame, column: str, tokenizer,
                   format_prompt: Callable[[Prompt], str]) -> pd.Series:
    """format_prompt(prompt) + response, plus one token for EOS; null where a value fails its own checks."""
    inputs = turns.length_inputs(frame, column)
    eos = 0 if column == "prompt" else 1
    valid = [i for i, pair in enumerate(inputs) if pair is not None]
    lengths: list[int | None] = [None] * len(frame)
    if valid:
        # One batched call: tokenizing row by row is much slower on big files.
        texts = [format_prompt(inputs[i][0]) + inputs[i][1] for i in valid]
        # verbose=False: a too-long row is what this check reports, not a reason for a tokenizer warning.
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        for i, ids in zip(valid, encoded, strict=True):
            lengths[i] = len(ids) + eos
    return pd.Series(lengths, index=frame.index, dtype="Int64")


# ------------------------------------------------------------------------------------------- running GX


@dataclass(frozen=True)
class _Outcome:
    planned: _Planned
    success: bool
    unexpected_count: int | None
    unexpected: list[dict]  # GX's offending rows: {"row": n, <checked columns>: values}
    error: str | None  # GX raised instead of evaluating


def _new_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


@contextmanager
def _quiet() -> Iterator[None]:
    """GX logs at INFO and warns about pandas internals; neither helps someone reading a data report."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"great_expectations(\.|$)")
            yield
    finally:
        logger.setLevel(level)


def _run_suite(context, source, spec: _Spec, frame: pd.DataFrame, planned: list[_Planned]) -> list[_Outcome]:
    import great_expectations as gx

    batch = source.add_dataframe_asset(spec.name).add_batch_definition_whole_dataframe(spec.name)
    suite = context.suites.add(gx.ExpectationSuite(name=spec.name))
    by_id = {}
    for item in planned:
        expectation = item.expectation.build()
        suite.add_expectation(expectation)  # gives it its id
        by_id[expectation.id] = item
    definition = gx.ValidationDefinition(name=spec.name, data=batch, suite=suite)
    definition = context.validation_definitions.add(definition)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=_RESULT_FORMAT)
    outcomes = [_outcome(by_id[res.expectation_config.id], res) for res in result.results]
    order = {id(item): i for i, item in enumerate(planned)}  # GX reorders results; report in plan order
    return sorted(outcomes, key=lambda outcome: order[id(outcome.planned)])


def _outcome(planned: _Planned, result) -> _Outcome:
    info = result.exception_info or {}
    error = info.get("exception_message") if info.get("raised_exception") else None
    details = result.result or {}
    return _Outcome(planned, bool(result.success), details.get("unexpected_count"),
                    list(details.get("unexpected_index_list") or []), error)


def _is_row_level(outcome: _Outcome) -> bool:
    """Rows can be quarantined only if GX named them (a wrong column dtype, say, fails without rows)."""
    return outcome.planned.row_level and outcome.error is None and bool(outcome.unexpected)


def _rows_to_quarantine(outcome: _Outcome, frame: pd.DataFrame, spec: _Spec) -> list[int]:
    rows = sorted({int(item[ROW]) for item in outcome.unexpected})
    if not outcome.planned.keep_first:
        return rows
    # GX flags every copy of a duplicate; keep the first copy and move only the later ones aside.
    flagged = frame[frame[ROW].isin(rows)]
    keys = [turns.key_column(column) for column in spec.columns]
    return sorted(int(row) for row in flagged.loc[flagged.duplicated(subset=keys), ROW])


# ------------------------------------------------------------------------------------- building the report


def _failure(outcome: _Outcome, records: dict[int, dict], spec: _Spec) -> ExpectationFailure:
    planned = outcome.planned
    description = planned.description + (f" (GX error: {outcome.error})" if outcome.error else "")
    return ExpectationFailure(
        expectation=planned.expectation.expectation_type,
        column=planned.column,
        unexpected_count=outcome.unexpected_count,
        example_rows=[_example(item, records, spec) for item in
                      sorted(outcome.unexpected, key=lambda item: int(item[ROW]))[:_EXAMPLE_ROWS]],
        description=description,
        row_level=_is_row_level(outcome),
    )


def _example(item: dict, records: dict[int, dict], spec: _Spec) -> dict:
    """The row number, the row's text columns and the checked (possibly derived) value."""
    row = int(item[ROW])
    record = records.get(row, {})
    texts = {column: record.get(column) for column in spec.columns if column in record}
    hidden = {ROW, turns.PROMPT_KEY, *map(turns.key_column, spec.columns)}  # keys repeat the texts
    checked = {key: value for key, value in item.items() if key not in hidden}
    return {ROW: row, **{key: _short(value) for key, value in {**texts, **checked}.items()}}


def _short(value: Any) -> Any:
    """A JSON-ready, readable value: numpy scalars become Python ones, NaN becomes null, long text is cut, and
    so are long lists of turns."""
    if isinstance(value, list):
        return [_short(item) for item in value[:_EXAMPLE_TURNS]] + ["..."] * (len(value) > _EXAMPLE_TURNS)
    if isinstance(value, dict):
        return {key: _short(item) for key, item in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return value[: _MAX_VALUE_CHARS - 3] + "..."
    return value


def _validate_file(name: str, path: Path, records: list[tuple[int, dict]], *, checks, context, source, tokenizer,
                   format_prompt: Callable[[Prompt], str], max_length: int,
                   training_prompts: frozenset[str] | None, quarantine: bool, out_dir: Path) -> FileReport:
    frame = records_frame(records)
    spec = _Spec(name, DATASET_KINDS[name], _columns(DATASET_KINDS[name], set(frame.columns)), max_length,
                 training_prompts)
    frame = _with_derived_columns(frame, spec, tokenizer, format_prompt)
    planned = _plan(spec, set(frame.columns), checks)
    outcomes = _run_suite(context, source, spec, frame, planned)
    by_row = dict(records)
    failed = [outcome for outcome in outcomes if not outcome.success]
    failures = [_failure(outcome, by_row, spec) for outcome in failed]
    checks = [Check(item.expectation.expectation_type, item.column, item.description) for item in planned]
    report = FileReport(name, path, spec.kind, len(records), failures, [], path, None, checks)
    if not quarantine or report.success or report.table_level_failures:
        _remove_stale_outputs(name, out_dir)
        return report
    reasons: dict[int, list[str]] = {}
    for outcome, failure in zip(failed, failures, strict=True):
        for row in _rows_to_quarantine(outcome, frame, spec):
            reasons.setdefault(row, []).append(failure.label)
    clean_path, quarantine_path = _write_split(name, records, reasons, out_dir)
    return FileReport(name, path, spec.kind, len(records), failures, sorted(reasons), clean_path,
                      quarantine_path, checks)


def _unreadable(name: str, path: Path, error: DataValidationError) -> FileReport:
    failure = ExpectationFailure("file_is_readable", None, None, [], description=str(error), row_level=False)
    check = Check("file_is_readable", None, "the file exists and every line is a JSON object")
    return FileReport(name, path, DATASET_KINDS[name], 0, [failure], [], path, None, [check])


# -------------------------------------------------------------------------------------------------- writing


def _write_split(name: str, records: list[tuple[int, dict]], reasons: dict[int, list[str]],
                 out_dir: Path) -> tuple[Path, Path]:
    """Quarantined rows (with their row number and failed expectations) and the clean rest, in file order."""
    quarantine_path = out_dir / "quarantine" / f"{name}.jsonl"
    clean_path = out_dir / "clean" / f"{name}.jsonl"
    bad = [{**record, ROW: row, FAILED_EXPECTATIONS: reasons[row]}
           for row, record in records if row in reasons]
    write_jsonl(bad, quarantine_path)
    write_jsonl((record for row, record in records if row not in reasons), clean_path)
    return clean_path, quarantine_path


def _remove_stale_outputs(name: str, out_dir: Path) -> None:
    """A reused out_dir may hold a previous run's split of this file; leaving it would mislead readers."""
    for folder in ("clean", "quarantine"):
        (out_dir / folder / f"{name}.jsonl").unlink(missing_ok=True)


def _write_reports(report: ValidationReport, out_dir: Path) -> None:
    write_text(out_dir / "report.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    write_text(out_dir / "report.html", report.to_html())


def _blocking_problems(report: ValidationReport, on_failure: str, max_fraction: float) -> list[str]:
    problems = []
    for file in report.files:
        if file.success:
            continue
        if on_failure == "fail" or file.table_level_failures:
            problems.append(describe(file))
        elif file.quarantined_fraction > max_fraction:
            problems.append(
                f"{file.name}: {file.path}: quarantined {len(file.quarantined_rows)} of {file.rows} rows "
                f"({file.quarantined_fraction:.1%}), more than the limit "
                f"validation.max_quarantine_fraction={max_fraction:.1%}\n" + describe(file)
            )
    return problems


# ---------------------------------------------------------------------------------------------------- entry


def validate_files(
    files: dict[str, Path],
    *,
    tokenizer,
    format_prompt: Callable[[Prompt], str],
    max_length: int,
    on_failure: Literal["fail", "quarantine"],
    max_quarantine_fraction: float,
    out_dir: Path,
    suite: Literal["full", "token_lengths"] = "full",
) -> ValidationReport:
    """Validate every file, write report.json/report.html to out_dir, then raise or quarantine as configured.

    The full suite checks token lengths only with a `tokenizer`: a tokenizer trained on this data does not exist
    before the data is validated, so its base-model stage runs the `token_lengths` suite on the validated files.

    Raises DataValidationError when `on_failure="fail"` and any file failed; and in quarantine mode when a
    file has a table-level failure or loses more than `max_quarantine_fraction` of its rows.
    """
    unknown = sorted(set(files) - set(DATASET_KINDS))
    if unknown:
        raise ValueError(f"unknown dataset names {unknown}; expected some of {sorted(DATASET_KINDS)}")
    if on_failure not in ("fail", "quarantine"):
        raise ValueError(f"on_failure must be 'fail' or 'quarantine', got {on_failure!r}")
    if suite == "token_lengths" and tokenizer is None:
        raise ValueError("the token_lengths suite needs a tokenizer")
    out_dir = Path(out_dir)
    if suite == "token_lengths":
        checks = frozenset({_fits_max_length})
    else:
        checks = frozenset(build for build, _ in _CHECKS if tokenizer is not None or build is not _fits_max_length)
    records, errors = {}, {}
    for name, path in files.items():
        try:
            records[name] = read_records(Path(path))
        except DataValidationError as err:
            errors[name] = err
    training_prompts = _training_prompts(records)
    reports = []
    with _quiet():
        context = _new_context()
        source = context.data_sources.add_pandas("alignflow")
        for name, path in files.items():
            if name in errors:
                reports.append(_unreadable(name, Path(path), errors[name]))
                _remove_stale_outputs(name, out_dir)
                continue
            reports.append(_validate_file(
                name, Path(path), records[name], checks=checks, context=context, source=source,
                tokenizer=tokenizer, format_prompt=format_prompt, max_length=max_length,
                training_prompts=training_prompts if name in EVAL_FILES else None,
                quarantine=on_failure == "quarantine", out_dir=out_dir,
            ))
    report = ValidationReport(reports)
    _write_reports(report, out_dir)
    problems = _blocking_problems(report, on_failure, max_quarantine_fraction)
    if problems:
        raise DataValidationError(
            f"data validation failed (report: {out_dir / 'report.html'}):\n" + "\n".join(problems)
        )
    return report


def _training_prompts(records: dict[str, list[tuple[int, dict]]]) -> frozenset[str] | None:
    """Prompt keys of the training files given; None when there are none to check leakage against."""
    present = [name for name in TRAINING_FILES if name in records]
    if not present:
        return None
    keys = set()
    for name in present:
        column = _columns(DATASET_KINDS[name], {key for _, record in records[name] for key in record})[0]
        keys.update(turns.prompt_key(record[column], column) for _, record in records[name]
                    if isinstance(record.get(column), (str, list)))
    return frozenset(keys - {None})  # a malformed prompt has no key
