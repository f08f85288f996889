"""The Great Expectations suites on TRL's conversational format: good files of every kind pass; each bad turn
is caught by a real GX expectation that names the file, the check in words, the column, the row and the
problem (the derived column's value)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from models.prompting import prompt_formatter
from models.tiny import train_tokenizer
from tasks.core.errors import DataValidationError
from tasks.data.demo import build_demo_datasets
from tasks.data.expectations import validate_files

format_prompt = prompt_formatter(None, "plain", "User: {prompt}\nAssistant:")


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [value for rows in build_demo_datasets().values() for row in rows for value in row.values()
             if isinstance(value, str)]
    return train_tokenizer(texts, vocab_size=400, model_max_length=256)


def write(tmp_path: Path, name: str, rows: list) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def dialogues(n: int = 4, topic: str = "clean") -> list[dict]:
    return [{"messages": [system("Be brief."), user(f"How do I {topic} thing {i}?"), assistant(f"Wipe thing {i}."),
                          user("And then?"), assistant(" Dry it.")]} for i in range(n)]


def sft_turns(n: int = 4, topic: str = "fold") -> list[dict]:
    return [{"prompt": [user("Hi?"), assistant("Hello."), user(f"How do I {topic} thing {i}?")],
             "completion": [assistant(f" Fold thing {i} in half.")]} for i in range(n)]


def preference_turns(n: int = 4, topic: str = "paint") -> list[dict]:
    rows = [{"prompt": [system("Be kind."), user(f"How do I {topic} thing {i}?")],
             "chosen": [assistant(f" Sand thing {i} first.")], "rejected": [assistant(" I can't help.")]}
            for i in range(n)]
    rows[-1]["chosen"] = f" Sand thing {n - 1} first, as text."  # text in one column, turns in the others
    return rows


def prompt_turns(n: int = 4, topic: str = "mend") -> list[dict]:
    return [{"prompt": [system("Be brief."), user(f"How do I {topic} thing {i}?")], "harmful": False}
            for i in range(n)]


def validate(tmp_path: Path, tokenizer, files: dict[str, Path], **overrides):
    options = {"max_length": 128, "on_failure": "fail", "max_quarantine_fraction": 0.5,
               "out_dir": tmp_path / "out", **overrides}
    return validate_files(files, tokenizer=tokenizer, format_prompt=format_prompt, **options)


def failure_message(tmp_path: Path, tokenizer, files: dict[str, Path], **overrides) -> str:
    with pytest.raises(DataValidationError) as caught:
        validate(tmp_path, tokenizer, files, **overrides)
    return str(caught.value)


def example_line(message: str, row: int) -> str:
    """The example-row line of `row` in the message (the first, if several failures name it)."""
    found = re.search(rf"^ +row {row}: (.*)$", message, flags=re.MULTILINE)
    assert found, f"row {row} not named in:\n{message}"
    return found.group(1)


def test_good_conversational_files_of_every_kind_pass(tmp_path, tokenizer):
    files = {
        "sft_train": write(tmp_path, "sft_train", dialogues()),
        "sft_eval": write(tmp_path, "sft_eval", sft_turns()),
        "preferences_train": write(tmp_path, "preferences_train", preference_turns()),
        "preferences_eval": write(tmp_path, "preferences_eval", preference_turns(topic="glue")),
        "eval_prompts": write(tmp_path, "eval_prompts", prompt_turns()),
        "red_team_prompts": write(tmp_path, "red_team_prompts", [{"prompt": "Plain text is fine too?"},
                                                                  *prompt_turns(topic="break")]),
    }

    report = validate(tmp_path, tokenizer, files)

    assert report.success
    checks = {file.name: {(check.expectation, check.column) for check in file.checks} for file in report.files}
    assert ("expect_column_values_to_be_null", "messages_roles") in checks["sft_train"]
    assert ("expect_column_values_to_be_between", "messages_tokens") in checks["sft_train"]
    assert ("expect_column_values_to_be_unique", "messages") in checks["sft_train"]
    assert ("expect_column_values_to_be_null", "completion_order") in checks["sft_eval"]
    assert ("expect_column_values_to_not_be_in_set", "prompt") in checks["sft_eval"]
    assert ("expect_column_values_to_be_null", "rejected_last") in checks["preferences_train"]
    assert ("expect_column_values_to_be_null", "prompt_content") in checks["eval_prompts"]


# Each case: files to write, the file that fails, the derived column named, the check in words, the
# offending row and what its derived column says.
BAD_TURNS = {
    "unknown_role": (
        {"preferences_train": [*preference_turns(1),
                               {"prompt": [user("Hi?"), {"role": "bot", "content": " Hello."}, user("Paint?")],
                                "chosen": [assistant(" Sand.")], "rejected": [assistant(" No.")]}]},
        "preferences_train", "prompt_roles", "'prompt' turns have roles system, user or assistant",
        2, "turn 2 has role 'bot', not one of system, user, assistant",
    ),
    "two_user_turns_in_a_row": (
        {"sft_train": [*dialogues(2), {"messages": [user("A?"), user("B?"), assistant(" C.")]}]},
        "sft_train", "messages_order", "'messages' turns alternate from the user (after an optional system turn)",
        3, "turn 2 is 'user', expected 'assistant' (turns alternate from the user)",
    ),
    "prompt_ends_with_the_assistant": (
        {"eval_prompts": [*prompt_turns(1), {"prompt": [user("Hi?"), assistant(" Hello.")]}]},
        "eval_prompts", "prompt_last", "'prompt' turns end with the user's turn",
        2, "last turn is 'assistant', expected 'user'",
    ),
    "messages_end_with_the_user": (
        {"sft_train": [{"messages": [system("Be brief."), user("Hi?")]}, *dialogues(2)]},
        "sft_train", "messages_last", "'messages' turns end with the assistant's turn",
        1, "last turn is 'user', expected 'assistant'",
    ),
    "response_with_two_turns": (
        {"sft_eval": [*sft_turns(2), {"prompt": [user("Hi?")],
                                      "completion": [assistant(" Hello."), assistant(" Again.")]}]},
        "sft_eval", "completion_order", "'completion' as turns is one assistant turn",
        3, "a response is one assistant turn, got ['assistant', 'assistant']",
    ),
    "empty_content": (
        {"preferences_train": [*preference_turns(2), {"prompt": [user("Paint?")], "chosen": [assistant(" \n ")],
                                                      "rejected": [assistant(" No.")]}]},
        "preferences_train", "chosen_content", "'chosen' turns have non-empty content",
        3, "turn 1 has empty content",
    ),
    "turn_without_content": (
        {"sft_train": [{"prompt": [{"role": "user"}], "completion": " Fine."}, *sft_turns(2)]},
        "sft_train", "prompt_shape", "'prompt' is text or a list of {role, content} turns",
        1, "turn 1 has no string 'content'",
    ),
    "a_number": (
        {"preferences_train": [*preference_turns(1), {"prompt": "Paint?", "chosen": " Sand.", "rejected": 7}]},
        "preferences_train", "rejected_shape", "'rejected' is text or a list of {role, content} turns",
        2, "a number, expected text or a list of turns",
    ),
    "messages_as_text": (
        {"sft_train": [*dialogues(1), {"messages": "User: Hi? Assistant: Hello."}]},
        "sft_train", "messages_shape", "'messages' is a list of {role, content} turns",
        2, "text, expected a list of turns",
    ),
    "too_long_after_templating": (
        {"sft_train": [*dialogues(1), {"messages": [system("word " * 300), user("Hi?"), assistant(" Hello.")]}]},
        "sft_train", "messages_tokens", "format_prompt(messages[:-1]) + messages[-1] + EOS is at most 128 tokens",
        2, None,
    ),
    "chosen_equals_rejected_as_turns": (
        {"preferences_train": [*preference_turns(2), {"prompt": [user("Paint?")], "chosen": [assistant(" Same.")],
                                                      "rejected": [assistant(" Same. ")]}]},
        "preferences_train", "chosen_equals_rejected", "'chosen' differs from 'rejected'", 3, True,
    ),
    "chosen_text_equals_rejected_turn": (
        {"preferences_train": [{"prompt": [user("Paint?")], "chosen": " Same.", "rejected": [assistant("Same.")]},
                               *preference_turns(2)]},
        "preferences_train", "chosen_equals_rejected", "'chosen' differs from 'rejected'", 1, True,
    ),
}


@pytest.mark.parametrize("case", BAD_TURNS, ids=list(BAD_TURNS))
def test_bad_turns_name_file_check_column_row_and_problem(tmp_path, tokenizer, case):
    contents, bad_file, column, words, row, problem = BAD_TURNS[case]
    files = {name: write(tmp_path, name, rows) for name, rows in contents.items()}

    message = failure_message(tmp_path, tokenizer, files)

    assert f"{files[bad_file]} (" in message
    expectation = "expect_column_values_to_be_between" if column.endswith("_tokens") else (
        "expect_column_values_to_be_in_set" if column == "chosen_equals_rejected"
        else "expect_column_values_to_be_null")
    assert f"{expectation} [{column}]: 1 unexpected -- {words}" in message
    failure = message[message.index(f"{expectation} [{column}]"):]
    example = json.loads(example_line(failure, row))
    assert example["row"] == row
    if problem is not None:
        assert example[column] == problem
    else:
        assert example[column] > 128


def test_token_length_counts_the_rendered_turns_and_eos(tmp_path, tokenizer):
    row = dialogues(1)[0]
    prompt, answer = row["messages"][:-1], row["messages"][-1]["content"]
    rendered = "Be brief.\nUser: How do I clean thing 0?\nAssistant: Wipe thing 0.\nUser: And then?\nAssistant:"
    assert format_prompt(prompt) == rendered  # the system turn and the earlier exchange count too
    length = len(tokenizer(rendered + answer, add_special_tokens=False)["input_ids"])
    files = {"sft_train": write(tmp_path, "sft_train", [row])}

    assert validate(tmp_path, tokenizer, files, max_length=length + 1).success
    message = failure_message(tmp_path, tokenizer, files, max_length=length)
    assert f'"messages_tokens": {length + 1}' in message


def test_token_length_of_prompt_turns_with_a_response_turn(tmp_path, tokenizer):
    row = sft_turns(1)[0]
    text = format_prompt(row["prompt"]) + row["completion"][0]["content"]
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    files = {"sft_train": write(tmp_path, "sft_train", [row])}

    assert validate(tmp_path, tokenizer, files, max_length=length + 1).success
    message = failure_message(tmp_path, tokenizer, files, max_length=length)
    assert f'"completion_tokens": {length + 1}' in message


@pytest.mark.parametrize(
    ("name", "rows", "expectation", "column", "row"),
    [
        ("sft_train", [*dialogues(3), dialogues(3)[1]], "expect_column_values_to_be_unique", "messages", 4),
        ("sft_train", [*sft_turns(3), sft_turns(3)[0]], "expect_compound_columns_to_be_unique",
         "prompt,completion", 4),
        # A one-turn prompt and response are the same row as their bare texts: the model sees the same.
        ("sft_train", [{"prompt": "Hi?", "completion": " Hello."}, *sft_turns(2),
                       {"prompt": [user("Hi?")], "completion": [assistant(" Hello.")]}],
         "expect_compound_columns_to_be_unique", "prompt,completion", 4),
        ("preferences_train", [*preference_turns(3), preference_turns(3)[1]],
         "expect_compound_columns_to_be_unique", "prompt,chosen,rejected", 4),
        ("eval_prompts", [*prompt_turns(3), {"prompt": prompt_turns(3)[2]["prompt"], "harmful": True}],
         "expect_column_values_to_be_unique", "prompt", 4),
    ],
)
def test_conversational_duplicates_are_found_and_only_later_copies_quarantined(tmp_path, tokenizer, name, rows,
                                                                                expectation, column, row):
    files = {name: write(tmp_path, name, rows)}

    message = failure_message(tmp_path, tokenizer, files)
    assert f"{expectation} [{column}]" in message
    example_line(message, row)

    report = validate(tmp_path, tokenizer, files, on_failure="quarantine")
    assert report.files[0].quarantined_rows == [row]


@pytest.mark.parametrize(
    ("training", "eval_prompt"),
    [
        ({"preferences_train": preference_turns(3)}, preference_turns(3)[1]["prompt"]),
        # A messages dialogue's prompt is its turns before the last.
        ({"sft_train": dialogues(3)}, dialogues(3)[2]["messages"][:-1]),
        # A training prompt of one user turn is the same prompt as its bare text.
        ({"sft_train": [{"prompt": [user("Is this new?")], "completion": " No."}]}, "Is this new?"),
        ({"sft_train": [{"prompt": "Is this new?", "completion": " No."}]}, [user("Is this new?")]),
    ],
    ids=["preference_turns", "messages", "turn_in_training", "turn_in_eval"],
)
def test_eval_prompts_leaking_from_conversational_training_prompts_are_named(tmp_path, tokenizer, training,
                                                                               eval_prompt):
    files = {name: write(tmp_path, name, rows) for name, rows in training.items()}
    files["eval_prompts"] = write(tmp_path, "eval_prompts", [*prompt_turns(2), {"prompt": eval_prompt}])

    message = failure_message(tmp_path, tokenizer, files)

    assert f"{files['eval_prompts']} (" in message
    assert ("expect_column_values_to_not_be_in_set [prompt]: 1 unexpected -- the prompt is not in the training "
            "data") in message
    assert json.loads(example_line(message, 3)) == {"row": 3, "prompt": eval_prompt}
    for name in training:
        assert str(files[name]) not in message


def test_a_messages_eval_file_is_checked_for_leakage_by_its_prompt_turns(tmp_path, tokenizer):
    files = {"preferences_train": write(tmp_path, "preferences_train", preference_turns(2)),
             "sft_eval": write(tmp_path, "sft_eval", [
                 *dialogues(2),
                 {"messages": [*preference_turns(2)[0]["prompt"], assistant(" Sand it.")]},
             ])}

    message = failure_message(tmp_path, tokenizer, files)

    assert "expect_column_values_to_not_be_in_set [messages]" in message
    assert json.loads(example_line(message, 3))["row"] == 3


def test_bad_turns_are_quarantined_with_their_checks(tmp_path, tokenizer):
    rows = dialogues(6)
    rows[1] = {"messages": [user("Hi?"), {"role": "bot", "content": " Hello."}]}  # row 2
    rows[4] = {"messages": [user("Hi?"), assistant("")]}  # row 5
    path = write(tmp_path, "sft_train", rows)

    report = validate(tmp_path, tokenizer, {"sft_train": path}, on_failure="quarantine")

    (file,) = report.files
    assert file.quarantined_rows == [2, 5]
    quarantined = [json.loads(line) for line in file.quarantine_path.read_text().splitlines()]
    assert quarantined[0]["_failed_expectations"] == ["expect_column_values_to_be_null(messages_roles)"]
    assert quarantined[1]["_failed_expectations"] == ["expect_column_values_to_be_null(messages_content)"]
    assert quarantined[1]["messages"] == rows[4]["messages"]  # the row as it was, turns and all
    kept = [row for number, row in enumerate(rows, start=1) if number not in (2, 5)]
    assert file.clean_path.read_text() == "".join(json.dumps(row) + "\n" for row in kept)


def test_report_shows_the_turns_and_the_problem(tmp_path, tokenizer):
    rows = [*dialogues(1), {"messages": [user("Hi?"), {"role": "bot", "content": " Hello."}]}]
    failure_message(tmp_path, tokenizer, {"sft_train": write(tmp_path, "sft_train", rows)})

    (file,) = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    roles = next(failure for failure in file["failures"] if failure["column"] == "messages_roles")
    assert roles["row_level"] is True and roles["unexpected_count"] == 1
    (example,) = roles["example_rows"]
    assert example["messages_roles"] == "turn 2 has role 'bot', not one of system, user, assistant"
    assert example["messages"] == rows[1]["messages"]  # the turns as they are, not escaped into a string
    page = (tmp_path / "out" / "report.html").read_text()
    assert "turn 2 has role &#x27;bot&#x27;, not one of system, user, assistant" in page


def test_conversational_parquet_passes(tmp_path, tokenizer):
    path = tmp_path / "preferences_train.parquet"
    pd.DataFrame(preference_turns(3)[:2]).to_parquet(path)
    assert validate(tmp_path, tokenizer, {"preferences_train": path}).success


def test_long_dialogues_are_shortened_in_the_report(tmp_path, tokenizer):
    turns = [user("x" * 200), assistant("y")] * 6 + [user("z"), {"role": "bot", "content": "b"}]
    failure_message(tmp_path, tokenizer, {"sft_train": write(tmp_path, "sft_train", [{"messages": turns}])})

    (file,) = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    (example,) = next(f for f in file["failures"] if f["column"] == "messages_roles")["example_rows"]
    assert example["messages_roles"] == "turn 14 has role 'bot', not one of system, user, assistant"
    shown = example["messages"]
    assert len(shown) == 9 and shown[-1] == "..."  # eight turns, then a mark that more were left out
    assert shown[0] == {"role": "user", "content": "x" * 77 + "..."}


def failed_checks(tmp_path: Path) -> dict[tuple[str, str], list[dict]]:
    """(expectation, column) -> example rows of every failure in the last report.json (one file)."""
    (file,) = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    return {(failure["expectation"], failure["column"]): failure["example_rows"] for failure in file["failures"]}


def test_an_unknown_role_is_the_one_failure_and_names_the_role(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "wizard", "content": "hi"}, assistant("hello")]}]
    failure_message(tmp_path, tokenizer, {"sft_train": write(tmp_path, "sft_train", rows)})

    failed = failed_checks(tmp_path)
    assert set(failed) == {("expect_column_values_to_be_null", "messages_roles")}  # not order, last or unique
    (example,) = failed["expect_column_values_to_be_null", "messages_roles"]
    assert example["messages_roles"] == "turn 1 has role 'wizard', not one of system, user, assistant"


@pytest.mark.parametrize("value", [["a"], {"x": 1}], ids=["list", "object"])
@pytest.mark.parametrize(("name", "row"), [("sft_train", {"completion": " ok"}), ("eval_prompts", {})])
def test_a_malformed_value_is_a_shape_failure_and_never_a_duplicate(tmp_path, tokenizer, value, name, row):
    rows = [{"prompt": value, **row}] * 2  # the same malformed row twice: a duplicate, were it judged
    failure_message(tmp_path, tokenizer, {name: write(tmp_path, name, rows)})

    assert set(failed_checks(tmp_path)) == {("expect_column_values_to_be_null", "prompt_shape")}
