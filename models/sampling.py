"""Ancestral sampling that keeps the token ids: what PPO's rollouts and the evaluation's KL read.

Each new token is drawn from softmax(logits / temperature) over the whole vocabulary. No top-k, top-p,
repetition penalty or any other processor a model's `generation_config` might add applies: the samples come from
exactly the distribution whose log-probabilities are then scored, so KL(policy || reference) estimated on them is
the KL of the models themselves (at temperature 1). A response ends at its first EOS, which it keeps; one that
reaches `max_new_tokens` first is truncated there and gets no EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.metrics import sampled_kl
from models.sequence_logprobs import position_ids_for, response_mask


@dataclass(frozen=True)
class SampledBatch:
    """Prompts (left-padded) followed by their sampled responses; response tensors are (B, T)."""

    sequences: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T): the prompts' mask, then 1 on response tokens up to the first EOS
    prompt_length: int  # P
    mask: torch.Tensor  # (B, T): 1 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # (B, T): log-prob of each sampled token at the sampling temperature (0 after EOS)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]  # (B, T)


def encode_left_padded(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, P), padded on the left so each prompt ends where its answer begins."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device))
    finally:
        tokenizer.padding_side = padding_side


@torch.no_grad()
def sample_responses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                     temperature: float, eos_token_id: int, pad_token_id: int) -> SampledBatch:
    """Sample one response per row of the left-padded prompts (B, P), with the KV cache. After its EOS a row
    is filled with `pad_token_id`, which the response mask leaves out. The sampling model's log-prob of each
    token comes with it: scoring the same ids again in one forward pass gives the same values."""
    if max_new_tokens < 1 or temperature <= 0:
        raise ValueError(f"sampling needs max_new_tokens >= 1 and temperature > 0, got {max_new_tokens} and "
                         f"{temperature}")
    was_training = model.training
    model.eval()
    try:
        positions = position_ids_for(attention_mask)  # (B, P)
        step_ids, step_positions, mask, cache = input_ids, positions, attention_mask, None
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new_tokens, logprobs = [], []
        for _ in range(max_new_tokens):
            output = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, cache=cache,
                           use_cache=True, logits_to_keep=1)
            cache = output.cache
            step_logprobs = torch.log_softmax(output.logits[:, -1].float() / temperature, dim=-1)  # (B, V)
            token = torch.multinomial(step_logprobs.exp(), num_samples=1).squeeze(1)  # (B,)
            logprob = step_logprobs.gather(-1, token.unsqueeze(-1)).squeeze(-1)  # (B,)
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            new_tokens.append(token)
            logprobs.append(torch.where(finished, torch.zeros_like(logprob), logprob))
            finished |= token == eos_token_id
            if bool(finished.all()):
                break
            step_ids, step_positions = token.unsqueeze(1), step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        model.train(was_training)
    response_ids = torch.stack(new_tokens, dim=1)  # (B, T)
    response = response_mask(response_ids, eos_token_id)
    return SampledBatch(sequences=torch.cat([input_ids, response_ids], dim=1),
                        attention_mask=torch.cat([attention_mask, response.to(attention_mask.dtype)], dim=1),
                        prompt_length=input_ids.shape[1], mask=response,
                        logprobs=torch.stack(logprobs, dim=1) * response)


def kl_to_reference_samples(policy, reference_logprobs: Callable[[SampledBatch], torch.Tensor], tokenizer,
                            prompts: list[str], *, max_new_tokens: int, batch_size: int,
                            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(policy || reference) per answer (N,) and each answer's token count (N,): one answer per prompt sampled
    from the policy at temperature 1 over its whole vocabulary, with `reference_logprobs(batch)` -> (B, T)
    scoring the same token ids. The estimator the evaluation's KL gate and the training monitors' KL budget both
    read (`models.metrics.sampled_kl`). Seeded, without touching the global random state."""
    per_answer, tokens = [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], policy.device)
            sampled = sample_responses(policy, batch["input_ids"], batch["attention_mask"],
                                       max_new_tokens=max_new_tokens, temperature=1.0,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            per_answer.append(sampled_kl(sampled.logprobs, reference_logprobs(sampled), sampled.mask))  # (B,)
            tokens.append(sampled.mask.sum(dim=1))  # (B,)
    return torch.cat(per_answer), torch.cat(tokens)
