"""The Great Expectations suites: the demo data passes; each kind of bad input is caught and named exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from models.tiny import train_tokenizer
from tasks.core.errors import DataValidationError
from tasks.data.demo import build_demo_datasets, write_demo_data
from tasks.data.expectations import DATASET_KINDS, validate_files
from tasks.data.readers import read_rows


def format_prompt(prompt: str) -> str:
    return f"User: {prompt}\nAssistant:"


@pytest.fixture(scope="module")
def tokenizer():
    texts = [value for rows in build_demo_datasets().values() for row in rows for value in row.values()
             if isinstance(value, str)]
    return train_tokenizer(texts, vocab_size=400, model_max_length=256)


def write(tmp_path: Path, name: str, rows: list) -> Path:
    """One JSON value per line, like the real data files (rows may be non-objects for the bad cases)."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sft_rows(n: int = 6) -> list[dict]:
    return [{"prompt": f"How do I clean thing {i}?", "completion": f" Wipe thing {i} with a cloth."}
            for i in range(n)]


def preference_rows(n: int = 6) -> list[dict]:
    return [{"prompt": f"How do I paint thing {i}?", "chosen": f" Sand thing {i} first.",
             "rejected": " I can't help with that."} for i in range(n)]


def validate(tmp_path: Path, tokenizer, files: dict[str, Path], **overrides):
    options = {"max_length": 128, "on_failure": "fail", "max_quarantine_fraction": 0.5,
               "out_dir": tmp_path / "out", **overrides}
    return validate_files(files, tokenizer=tokenizer, format_prompt=format_prompt, **options)


def failure_message(tmp_path: Path, tokenizer, files: dict[str, Path], **overrides) -> str:
    with pytest.raises(DataValidationError) as caught:
        validate(tmp_path, tokenizer, files, **overrides)
    return str(caught.value)


def assert_names_row(message: str, row: int) -> None:
    assert re.search(rf"\brow {row}\b", message), f"row {row} not named in:\n{message}"


def test_demo_data_passes(tmp_path, tokenizer):
    files = write_demo_data(tmp_path / "data")
    assert set(files) == set(DATASET_KINDS)

    report = validate(tmp_path, tokenizer, files, max_length=128)

    assert report.success
    for file in report.files:
        assert file.rows == len(build_demo_datasets()[file.name])
        assert file.clean_path == files[file.name] and file.quarantine_path is None
    checks = {file.name: {check.expectation for check in file.checks} for file in report.files}
    assert "expect_column_values_to_not_be_in_set" in checks["eval_prompts"]  # leakage was checked
    assert "expect_column_values_to_not_be_in_set" not in checks["red_team_prompts"]
    assert "expect_column_values_to_be_in_set" in checks["preferences_train"]  # chosen != rejected
    assert not (tmp_path / "out" / "clean").exists()


# Each case: files to write, the file that fails, the expectation and column named, the offending row.
BAD_INPUTS = {
    "missing_column": (
        {"sft_train": [{"prompt": "Hi?", "response": " Hello."}]},
        "sft_train", "expect_column_to_exist", "completion", None,
    ),
    "null_string": (
        {"sft_train": [*sft_rows(2), {"prompt": None, "completion": " Fine."}, *sft_rows(5)[3:]]},
        "sft_train", "expect_column_values_to_not_be_null", "prompt", 3,
    ),
    "missing_key": (
        {"sft_train": [*sft_rows(3), {"prompt": "Where is my key?"}]},
        "sft_train", "expect_column_values_to_not_be_null", "completion", 4,
    ),
    "empty_string": (
        {"sft_train": [{"prompt": "", "completion": " Fine."}, *sft_rows(3)[1:]]},
        "sft_train", "expect_column_values_to_match_regex", "prompt", 1,
    ),
    "whitespace_only": (
        {"preferences_train": [*preference_rows(4),
                               {"prompt": "Paint?", "chosen": " \n\t ", "rejected": " No."}]},
        "preferences_train", "expect_column_values_to_match_regex", "chosen", 5,
    ),
    "not_a_string": (
        {"sft_train": [*sft_rows(1), {"prompt": "Count?", "completion": 42}, *sft_rows(3)[1:]]},
        "sft_train", "expect_column_values_to_be_null", "completion_shape", 2,
    ),
    "chosen_equals_rejected": (
        {"preferences_train": [*preference_rows(3),
                               {"prompt": "Paint?", "chosen": " Same.", "rejected": " Same. "}]},
        "preferences_train", "expect_column_values_to_be_in_set", "chosen_equals_rejected", 4,
    ),
    "too_many_tokens": (
        {"sft_train": [*sft_rows(1), {"prompt": "Tell me everything.", "completion": " word" * 300}]},
        "sft_train", "expect_column_values_to_be_between", "completion_tokens", 2,
    ),
    "prompt_too_long": (
        {"red_team_prompts": [{"prompt": "Ok?"}, {"prompt": "Ok?" * 200}]},
        "red_team_prompts", "expect_column_values_to_be_between", "prompt_tokens", 2,
    ),
    "duplicate_rows": (
        {"sft_train": [*sft_rows(4), sft_rows(2)[1]]},
        "sft_train", "expect_compound_columns_to_be_unique", "prompt,completion", 5,
    ),
    "duplicate_prompts": (
        {"eval_prompts": [{"prompt": "A?", "harmful": False}, {"prompt": "B?"}, {"prompt": "A?", "x": 1}]},
        "eval_prompts", "expect_column_values_to_be_unique", "prompt", 3,
    ),
    "eval_prompt_leaks": (
        {"preferences_train": preference_rows(4),
         "eval_prompts": [{"prompt": "A new question?"}, {"prompt": preference_rows(4)[2]["prompt"]}]},
        "eval_prompts", "expect_column_values_to_not_be_in_set", "prompt", 2,
    ),
    "unknown_request_kind": (
        {"preferences_train": [*preference_rows(2), {**preference_rows(3)[2], "kind": "harmfull"}]},
        "preferences_train", "expect_column_values_to_be_in_set", "kind", 3,
    ),
    "zero_rows": (
        {"sft_eval": []},
        "sft_eval", "expect_table_row_count_to_be_between", "table", None,
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_file_expectation_and_row(tmp_path, tokenizer, case):
    contents, bad_file, expectation, column, row = BAD_INPUTS[case]
    files = {name: write(tmp_path, name, rows) for name, rows in contents.items()}

    message = failure_message(tmp_path, tokenizer, files)

    assert str(files[bad_file]) in message
    assert f"{expectation} [{column}]" in message
    if row is not None:
        assert_names_row(message, row)
    for good in set(files) - {bad_file}:
        assert str(files[good]) not in message


def test_zero_rows_is_the_only_failure_of_an_empty_file(tmp_path, tokenizer):
    failure_message(tmp_path, tokenizer, {"sft_eval": write(tmp_path, "sft_eval", [])})
    (file,) = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    assert [failure["expectation"] for failure in file["failures"]] == [
        "expect_table_row_count_to_be_between"
    ]


def test_parquet_rows_are_numbered_and_cleaned_to_jsonl(tmp_path, tokenizer):
    rows = sft_rows(4)
    rows[1]["completion"] = "   "
    path = tmp_path / "sft_train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    assert read_rows(path)["row"].tolist() == [1, 2, 3, 4]

    report = validate(tmp_path, tokenizer, {"sft_train": path}, on_failure="quarantine")

    assert report.files[0].quarantined_rows == [2]
    kept = [row for number, row in enumerate(rows, start=1) if number != 2]
    assert report.files[0].clean_path.read_text() == "".join(json.dumps(row) + "\n" for row in kept)


def test_token_length_counts_eos(tmp_path, tokenizer):
    row = sft_rows(1)[0]
    text = format_prompt(row["prompt"]) + row["completion"]
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    files = {"sft_train": write(tmp_path, "sft_train", [row])}

    assert validate(tmp_path, tokenizer, files, max_length=length + 1).success
    message = failure_message(tmp_path, tokenizer, files, max_length=length)
    assert f'"completion_tokens": {length + 1}' in message


def test_only_training_prompts_count_as_leakage(tmp_path, tokenizer):
    shared = "How do I clean thing 0?"
    files = {
        "sft_train": write(tmp_path, "sft_train", sft_rows(3)),
        "red_team_prompts": write(tmp_path, "red_team_prompts", [{"prompt": shared}]),  # not an eval file
        "preferences_eval": write(tmp_path, "preferences_eval", preference_rows(3)),
    }
    assert validate(tmp_path, tokenizer, files).success


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{not json", "line 3 is not valid JSON"),
        (b'["a", "list"]', "line 3 is a JSON list, expected an object"),
        (b'{"prompt": "caf\xe9"}', "line 3 is not UTF-8 text (byte 16 of the line is 0xe9)"),  # Latin-1
    ],
)
def test_unreadable_line_names_file_and_line(tmp_path, tokenizer, line, problem):
    path = tmp_path / "sft_train.jsonl"
    path.write_bytes("".join(json.dumps(row) + "\n" for row in sft_rows(2)).encode() + line + b"\n")

    with pytest.raises(DataValidationError, match=re.escape(f"{path}: {problem}")):
        read_rows(path)
    message = failure_message(tmp_path, tokenizer, {"sft_train": path})
    assert f"{path}: {problem}" in message


def test_an_unreadable_parquet_file_is_named(tmp_path, tokenizer):
    path = tmp_path / "sft_train.parquet"
    path.write_bytes(b"PAR1 this is not a Parquet file")
    with pytest.raises(DataValidationError, match=re.escape(f"{path}: cannot read Parquet file (")):
        read_rows(path)
    assert f"{path}: cannot read Parquet file" in failure_message(tmp_path, tokenizer, {"sft_train": path})


def test_missing_file_is_reported_with_the_others(tmp_path, tokenizer):
    files = {"sft_train": tmp_path / "nope.jsonl",
             "sft_eval": write(tmp_path, "sft_eval", [{"prompt": "Hi?"}])}
    message = failure_message(tmp_path, tokenizer, files)
    assert f"{tmp_path / 'nope.jsonl'}: file does not exist" in message
    assert "expect_column_to_exist [completion]" in message  # validation went on to the next file


def test_read_rows_adds_line_numbers(tmp_path):
    path = tmp_path / "sft_train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    frame = read_rows(path)
    assert frame["row"].tolist() == [1, 3]  # blank line 2 skipped, line numbers kept
    assert frame["prompt"].tolist() == ["a", "c"]


# ----------------------------------------------------------------------------------------------- quarantine


def quarantine_case(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = sft_rows(10)
    rows[2] = {"prompt": None, "completion": " Fine."}  # row 3: null
    rows[4] = dict(rows[0])  # row 5: duplicate of row 1 (row 1 stays)
    rows[6] = {"prompt": "Long?", "completion": " word" * 300}  # row 7: too long
    return write(tmp_path, "sft_train", rows), rows


def test_quarantine_moves_bad_rows_aside(tmp_path, tokenizer):
    path, rows = quarantine_case(tmp_path)
    out = tmp_path / "out"

    report = validate(tmp_path, tokenizer, {"sft_train": path},
                      on_failure="quarantine", max_quarantine_fraction=0.3)

    (file,) = report.files
    assert file.quarantined_rows == [3, 5, 7]
    assert file.clean_path == out / "clean" / "sft_train.jsonl"
    assert file.quarantine_path == out / "quarantine" / "sft_train.jsonl"
    quarantined = [json.loads(line) for line in file.quarantine_path.read_text().splitlines()]
    assert [q["row"] for q in quarantined] == [3, 5, 7]
    assert quarantined[0]["_failed_expectations"] == ["expect_column_values_to_not_be_null(prompt)"]
    assert quarantined[1]["_failed_expectations"] == [
        "expect_compound_columns_to_be_unique(prompt,completion)"
    ]
    assert quarantined[2]["_failed_expectations"] == ["expect_column_values_to_be_between(completion_tokens)"]
    assert quarantined[1]["prompt"] == rows[4]["prompt"]
    kept = [row for number, row in enumerate(rows, start=1) if number not in (3, 5, 7)]
    assert file.clean_path.read_text() == "".join(json.dumps(row) + "\n" for row in kept)
    saved = json.loads((out / "report.json").read_text())
    assert saved["files"][0]["quarantined_count"] == 3 and saved["files"][0]["rows"] == 10
    assert saved["quarantined_count"] == 3 and saved["success"] is False


def test_quarantine_over_the_limit_stops_the_flow(tmp_path, tokenizer):
    path, _ = quarantine_case(tmp_path)

    message = failure_message(tmp_path, tokenizer, {"sft_train": path}, on_failure="quarantine",
                              max_quarantine_fraction=0.2)

    assert f"{path}: quarantined 3 of 10 rows (30.0%)" in message
    assert "max_quarantine_fraction=20.0%" in message
    assert (tmp_path / "out" / "report.json").exists()
    assert (tmp_path / "out" / "quarantine" / "sft_train.jsonl").exists()  # for inspection


def test_quarantine_still_raises_on_table_level_failure(tmp_path, tokenizer):
    files = {"sft_train": write(tmp_path, "sft_train", [{"prompt": "Hi?"}]),
             "sft_eval": write(tmp_path, "sft_eval", [])}

    message = failure_message(tmp_path, tokenizer, files,
                              on_failure="quarantine", max_quarantine_fraction=1.0)

    assert f"{files['sft_train']}" in message and "expect_column_to_exist [completion]" in message
    assert f"{files['sft_eval']}" in message and "expect_table_row_count_to_be_between [table]" in message
    assert not (tmp_path / "out" / "clean").exists()


def test_quarantine_with_nothing_to_drop_keeps_the_original(tmp_path, tokenizer):
    path = write(tmp_path, "sft_train", sft_rows(3))
    report = validate(tmp_path, tokenizer, {"sft_train": path}, on_failure="quarantine")
    assert report.success
    assert report.files[0].clean_path == path and report.files[0].quarantine_path is None


# ------------------------------------------------------------------------------------------------- reports


def test_reports_are_written_when_validation_fails(tmp_path, tokenizer):
    rows = [*preference_rows(2), {"prompt": "X?", "chosen": " Y.", "rejected": " Y."}]
    files = {"preferences_train": write(tmp_path, "preferences_train", rows)}

    failure_message(tmp_path, tokenizer, files)

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    (file,) = saved["files"]
    assert saved["success"] is False and file["success"] is False
    (failure,) = file["failures"]
    assert failure["expectation"] == "expect_column_values_to_be_in_set"
    assert failure["unexpected_count"] == 1 and failure["example_rows"][0]["row"] == 3
    assert any(check["success"] for check in file["checks"])  # passing checks are listed too
    page = (tmp_path / "out" / "report.html").read_text()
    assert "expect_column_values_to_be_in_set" in page and "FAIL" in page and "PASS" in page
    assert "&quot;row&quot;: 3" in page
    # Above the fold, before any file's section: the verdict, and each failure in a line linked to its file.
    summary = page[page.index('id="summary"'):page.index("<h2")]
    assert "1 of 1 datasets failed." in summary and 'href="#preferences_train"' in summary
    assert "expect_column_values_to_be_in_set" in summary and ": 1 rows" in summary


def test_example_values_are_shortened(tmp_path, tokenizer):
    files = {"sft_train": write(tmp_path, "sft_train", [{"prompt": "Long?", "completion": " word" * 300}])}
    failure_message(tmp_path, tokenizer, files)
    (failure,) = json.loads((tmp_path / "out" / "report.json").read_text())["files"][0]["failures"]
    assert len(failure["example_rows"][0]["completion"]) <= 80
