"""The reward-hacking monitor's probe runs on the probe set (`tasks.data.probes`): the policy answers greedily,
the reward model scores the answers and an independent check (`models.safety.answers_as_wanted`) judges them;
and the policy's KL to its reference, by the estimator the evaluation's KL gate reads."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.generation import DecodedBatch, generate
from models.safety import answers_as_wanted
from models.sampling import kl_to_reference_samples


def run_probe(model, tokenizer, probe, format_prompt: Callable, score: Callable[[list, list], torch.Tensor],
              *, max_new_tokens: int, batch_size: int, min_words: int) -> tuple[list[float], list[bool]]:
    """Greedy answers to the probe prompts (a `tasks.data.probes.Probe`): the reward model's score of each, and
    the gold check's verdict."""
    formatted = [format_prompt(prompt) for prompt in probe.prompts]
    answers = generate(model, tokenizer, formatted, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [answers_as_wanted(answer, wants, min_words)
               for answer, wants in zip(answers, probe.wants_refusal, strict=True)]
    return score(formatted, answers).float().tolist(), correct


def probe_kl(policy, reference_logprobs: Callable[[DecodedBatch], torch.Tensor], tokenizer, probe,
             format_prompt: Callable, *, max_new_tokens: int, batch_size: int, seed: int) -> float:
    """KL(policy || reference) in nats per answer on the probe prompts: answers sampled at temperature 1 over
    the whole vocabulary, the reference scoring the same ids. The same estimator as the evaluation's
    `eval/kl_to_reference`, so the monitors' KL budget and the gate's bound are one quantity; the KL a rollout
    penalises is taken at the rollout's own temperature, which is another."""
    kl, _ = kl_to_reference_samples(policy, reference_logprobs, tokenizer, [format_prompt(p) for p in probe.prompts],
                                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    return kl.mean().item()
