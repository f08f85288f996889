"""The two CAI backends: the local transformers model (exact log-probs, stop strings, context fitting, seeded
sampling) and the OpenAI-compatible HTTP endpoint, against a real server on a local port (retries, the
endpoint-down error, a 4xx that is not retried)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from models.loading import load_model_and_tokenizer
from tasks.cai.backends import (
    EndpointError,
    EndpointUnavailableError,
    HttpBackend,
    LocalBackend,
    choice_probability,
    cut_at_stop,
)
from tasks.cai.config import BackendSection
from tasks.core.errors import AlignflowError
from tests.helpers.cai import COMPLIANCE, REFUSAL, FakeOpenAI, closed_port_url, openai_server, tiny_model_dir


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir())
    return LocalBackend(model, tokenizer, lambda p: f"User: {p}\nAssistant:", batch_size=4, stop=["\n\n"],
                        identity="local:tiny")


def test_choice_probability_is_a_two_way_softmax():
    # log-probs (ln 0.3, ln 0.1): P(first) = 0.3 / (0.3 + 0.1) = 0.75
    assert choice_probability([math.log(0.3), math.log(0.1)]) == pytest.approx(0.75)
    assert choice_probability([-math.inf, -1.0]) == 0.0
    assert choice_probability([-1.0, -math.inf]) == 1.0
    assert choice_probability([-math.inf, -math.inf]) == 0.5  # neither label scored: no information


def test_cut_at_stop_keeps_the_text_before_the_first_stop_string():
    assert cut_at_stop("a critique\n\nUser: more", ["\nUser:", "\n\n"]) == "a critique"
    assert cut_at_stop("no stop here", ["\n\n"]) == "no stop here"


def test_local_option_logprobs_are_the_next_token_logprobs_of_the_labels(local):
    prompts = ["Which is better?\n(A) one\n(B) two\nThe answer is: (", "Short prompt ("]
    scores = local.option_logprobs(prompts, ("A", "B"))
    tokenizer = local.tokenizer
    for prompt, (score_a, score_b) in zip(prompts, scores, strict=True):
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            next_logprobs = torch.log_softmax(local.model(input_ids=ids).logits[0, -1].float(), dim=-1)
        for label, score in (("A", score_a), ("B", score_b)):
            (label_id,) = tokenizer(label, add_special_tokens=False)["input_ids"]  # one token each
            assert score == pytest.approx(next_logprobs[label_id].item(), abs=1e-5)


def test_local_prompt_too_long_for_the_context_is_cut_from_the_left(local):
    long_prompt = "How do I clean my car? " * 200 + "The end:"
    before = local.truncated_prompts
    (text,) = local.generate([long_prompt], max_new_tokens=4)
    assert isinstance(text, str)
    assert local.truncated_prompts == before + 1
    fitted = local._fit(long_prompt, reserve=4)
    assert fitted.endswith("The end:") and len(local.tokenizer(fitted)["input_ids"]) <= 256 - 4


def test_local_sampling_is_reproducible_from_the_seed_and_leaves_the_global_rng_alone(local):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = local.sample(["How do I paint my house?", "How do I clean my bike?"], n=2, max_new_tokens=6,
                         temperature=1.0, seed=7)
    assert torch.rand(1) == expected_next
    again = local.sample(["How do I paint my house?", "How do I clean my bike?"], n=2, max_new_tokens=6,
                         temperature=1.0, seed=7)
    assert first == again
    assert [len(pair) for pair in first] == [2, 2]


# ---------------------------------------------------------------------------------------------------- http


def _http(url: str, **fields) -> HttpBackend:
    config = BackendSection(kind="http", url=url, model_name="fake-model", batch_size=2, backoff_s=0.01, **fields)
    return HttpBackend(config, stop=["\n\n", "\nUser:"], prompt_template="User: {prompt}\nAssistant:",
                       prompt_format="plain")


def test_http_generation_sampling_and_choice_logprobs_against_a_local_server():
    fake = FakeOpenAI()
    with openai_server(fake) as url:
        backend = _http(url)
        prompts = [backend.format_request(p) for p in ("How do I steal a bike?", "How?", "Why?")]
        assert backend.generate(prompts, max_new_tokens=8) == [" " + COMPLIANCE] * 3
        critique = backend.generate(["...\nCritique:"], max_new_tokens=8)
        assert critique == [" It tells the user how to commit a crime."]  # cut at the stop string
        samples = backend.sample(prompts[:1], n=2, max_new_tokens=8, temperature=1.0, seed=3)
        assert sorted(samples[0]) == sorted([" " + REFUSAL, " " + COMPLIANCE])
        choice = "Q?\n(A) Sure! Do it.\n(B) Sorry, I can't help with that.\nThe answer is: ("
        ((score_a, score_b),) = backend.option_logprobs([choice], ("A", "B"))
        assert score_b == pytest.approx(math.log(0.9)) and score_a == pytest.approx(math.log(0.1))  # " B" counts as B
        backend.close()

    generation, *_ = fake.requests
    assert generation["path"] == "/v1/completions" and generation["model"] == "fake-model"
    assert generation["prompt"] == prompts[:2] and generation["temperature"] == 0.0  # batch_size=2 per request
    assert generation["stop"] == ["\n\n", "\nUser:"]
    sampling = next(r for r in fake.requests if r.get("n") == 2)
    assert sampling["seed"] == 3 and sampling["temperature"] == 1.0
    scoring = fake.requests[-1]
    assert scoring["max_tokens"] == 1 and scoring["logprobs"] == 5 and "stop" not in scoring


def test_http_retries_a_server_that_is_warming_up():
    fake = FakeOpenAI(fail_first=2)
    with openai_server(fake) as url:
        assert _http(url, max_retries=3).generate(["Hi"], max_new_tokens=4) == [" " + COMPLIANCE]
    assert len(fake.requests) == 3  # two 503s, then the answer


def test_http_endpoint_down_retries_then_raises_a_clear_error():
    url = closed_port_url()
    backend = _http(url, max_retries=2)
    start = time.monotonic()
    with pytest.raises(EndpointUnavailableError) as failure:
        backend.generate(["Hi"], max_new_tokens=4)
    message = str(failure.value)
    assert f"{url}/completions" in message
    assert "no answer after 3 attempts" in message and "ConnectError" in message
    assert isinstance(failure.value, AlignflowError)  # Prefect does not retry it again
    assert time.monotonic() - start < 5  # backoff 0.01 s, 0.02 s: bounded


def test_http_client_error_is_not_retried():
    fake = FakeOpenAI(status=400)
    with openai_server(fake) as url, pytest.raises(EndpointError, match="HTTP 400"):
        _http(url, max_retries=3).generate(["Hi"], max_new_tokens=4)
    assert len(fake.requests) == 1
