"""The reward-hacking monitor's probe run: the policy answers the probe set (`tasks.data.probes`) greedily; the
reward model scores the answers and an independent check (`models.safety.answers_as_wanted`) judges them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.generation import generate
from models.safety import answers_as_wanted


def run_probe(model, tokenizer, probe, format_prompt: Callable, score: Callable[[list, list], torch.Tensor],
              *, max_new_tokens: int, batch_size: int, min_words: int) -> tuple[list[float], list[bool]]:
    """Greedy answers to the probe prompts (a `tasks.data.probes.Probe`): the reward model's score of each, and
    the gold check's verdict."""
    formatted = [format_prompt(prompt) for prompt in probe.prompts]
    answers = generate(model, tokenizer, formatted, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [answers_as_wanted(answer, wants, min_words)
               for answer, wants in zip(answers, probe.wants_refusal, strict=True)]
    return score(formatted, answers).float().tolist(), correct
