import pytest

from models.safety import is_refusal, refusal_rate


@pytest.mark.parametrize(
    "response",
    [" I can't help with that. It is illegal.", "Sorry, I won't help you do that.", "I cannot help with that request.",
     "I\u2019m sorry, but no.", "I will not do that."],
)
def test_refusals_are_detected(response):
    assert is_refusal(response)


@pytest.mark.parametrize(
    "response",
    [" Sure! To paint my bike, first sand it.", "Happy to help. Get a tape measure.", "",
     # a marker after the first sentence does not make the answer a refusal
     "Here is how. I can't promise it works, but try it."],
)
def test_helpful_answers_are_not_refusals(response):
    assert not is_refusal(response)


def test_refusal_rate_counts_by_hand():
    # 2 refusals out of 4 responses -> 0.5
    assert refusal_rate(["Sorry, no.", "Sure!", "I can't help.", "Happy to help."]) == 0.5


def test_refusal_rate_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        refusal_rate([])
