"""TRL's conversational shape, read the same way by every stage: the pure helpers and `problems`, check by check."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.data.conversations import (
    is_conversation,
    problems,
    prompt_display,
    prompt_key,
    response_text,
    sft_examples,
    split_dialogue,
    text_of,
)


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


NO_PROBLEMS = {"shape": None, "roles": None, "order": None, "last": None, "content": None}
ALTERNATE = " (turns alternate from the user)"


def test_text_and_turns_are_told_apart():
    assert is_conversation([user("Hi")]) and is_conversation([])
    assert not is_conversation("Hi") and not is_conversation(None)


def test_a_response_as_text_is_its_string_or_its_assistant_turn():
    assert response_text(" Wipe it.") == " Wipe it."
    assert response_text([assistant(" Wipe it.")]) == " Wipe it."


def test_a_dialogue_splits_into_its_prompt_turns_and_the_last_answer():
    messages = [system("Be brief."), user("Hi?"), assistant(" Hello.")]
    assert split_dialogue(messages) == ([system("Be brief."), user("Hi?")], " Hello.")


def test_sft_examples_read_both_shapes():
    dialogues = pd.DataFrame({"messages": [[user("A?"), assistant(" a.")], [user("B?"), assistant(" b.")]]})
    assert sft_examples(dialogues) == ([[user("A?")], [user("B?")]], [" a.", " b."])
    pairs = pd.DataFrame({"prompt": ["A?", [user("B?")]], "completion": [" a.", [assistant(" b.")]]})
    assert sft_examples(pairs) == (["A?", [user("B?")]], [" a.", " b."])


def test_prompt_key_is_the_request_itself_or_canonical_json():
    assert prompt_key("How?") == "How?"
    # Key order inside a turn does not matter: the same turns give the same key.
    assert prompt_key([{"content": "How?", "role": "user"}]) == prompt_key([user("How?")])
    assert prompt_key([user("How?")]) == '[{"content": "How?", "role": "user"}]'
    assert prompt_key([user("How?")]) != prompt_key([user("Why?")])


def test_prompt_display_shows_turns_on_one_line():
    assert prompt_display("How?") == "How?"
    assert prompt_display([system("Be brief."), user("How?")]) == "system: Be brief. | user: How?"


def test_text_of_joins_every_turn_and_refuses_what_is_neither_text_nor_turns():
    assert text_of("Hi") == "Hi"
    assert text_of([user("Hi?"), assistant(" Hello.")]) == "Hi?\n Hello."
    assert text_of([{"role": "user"}]) is None
    assert text_of(["Hi"]) is None
    assert text_of(42) is None


@pytest.mark.parametrize("position", ["prompt", "response", "dialogue"])
def test_text_passes_every_check(position):
    assert problems("Anything at all", position) == NO_PROBLEMS


@pytest.mark.parametrize(
    ("value", "position"),
    [
        ([user("Hi?")], "prompt"),
        ([system("Be brief."), user("Hi?"), assistant(" Hello."), user("And?")], "prompt"),
        ([assistant(" Hello.")], "response"),
        ([user("Hi?"), assistant(" Hello.")], "dialogue"),
        ([system("Be brief."), user("Hi?"), assistant(" Hello."), user("And?"), assistant(" Bye.")], "dialogue"),
    ],
)
def test_well_formed_turns_pass_every_check(value, position):
    assert problems(value, position) == NO_PROBLEMS


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ([], "no turns"),
        (["Hi?"], "turn 1 is a str, expected an object"),
        ([user("Hi?"), {"role": "assistant"}], "turn 2 has no string 'content'"),
        ([{"content": "Hi?"}], "turn 1 has no string 'role'"),
        ([{"role": "user", "content": 7}], "turn 1 has no string 'content'"),
        ([{}], "turn 1 has no string 'role' or 'content'"),
    ],
)
def test_a_malformed_list_is_a_shape_problem_and_nothing_else_is_judged(value, shape):
    assert problems(value, "prompt") == {**NO_PROBLEMS, "shape": shape}


def test_an_unknown_role_is_named_with_its_turn_and_order_is_not_judged():
    # The order and last checks would only restate the unknown role.
    found = problems([user("Hi?"), {"role": "bot", "content": " Hello."}, {"role": "bot", "content": " Bye."}],
                     "prompt")
    assert found == {**NO_PROBLEMS, "roles": "turn 2 has role 'bot', not one of system, user, assistant"}


@pytest.mark.parametrize(
    ("value", "order"),
    [
        ([user("A?"), user("B?"), assistant(" c.")], "turn 2 is 'user', expected 'assistant'" + ALTERNATE),
        ([assistant(" Hi."), user("A?")], "turn 1 is 'assistant', expected 'user'" + ALTERNATE),
        # Turn numbers count the system turn: the second system turn is turn 2.
        ([system("A."), system("B."), user("C?")], "turn 2 is 'system', expected 'user'" + ALTERNATE),
        ([system("Be brief.")], "only a system turn"),
    ],
)
def test_turns_out_of_order_are_named(value, order):
    assert problems(value, "prompt")["order"] == order


def test_a_response_is_exactly_one_assistant_turn():
    assert problems([assistant(" A."), assistant(" B.")], "response")["order"] == (
        "a response is one assistant turn, got ['assistant', 'assistant']"
    )
    assert problems([system("S."), assistant(" A.")], "response")["order"] == (
        "a response is one assistant turn, got ['system', 'assistant']"
    )


@pytest.mark.parametrize(
    ("value", "position", "last"),
    [
        ([user("Hi?"), assistant(" Hello.")], "prompt", "last turn is 'assistant', expected 'user'"),
        ([system("Be brief."), user("Hi?")], "dialogue", "last turn is 'user', expected 'assistant'"),
        ([user("Hi?")], "response", "last turn is 'user', expected 'assistant'"),
    ],
)
def test_the_last_turn_depends_on_the_position(value, position, last):
    assert problems(value, position)["last"] == last


def test_empty_content_names_the_first_empty_turn():
    found = problems([user("Hi?"), assistant(" \n "), user("")], "prompt")
    assert found == {**NO_PROBLEMS, "content": "turn 2 has empty content"}
