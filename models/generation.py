"""The one decoding loop: every answer the project generates comes from `decode`.

Evaluation, the safety world, CAI, the feedback pages and the training probes call `generate` (text in, text
out); PPO's rollouts and the KL estimate call `decode` itself, which keeps the token ids and their log-probs.
RLOO's rollouts are TRL's own (its trainer generates).

`decode` runs left-padded batches with the KV cache, greedy or sampled. A sample is drawn from
softmax(logits / temperature), over the whole vocabulary unless `top_k` restricts it. No processor from a
model's `generation_config` applies (repetition penalty, top-p, ...): greedy is the argmax, and a sample comes
from exactly the distribution whose log-probabilities are returned with it, so KL(policy || reference)
estimated on such samples is the KL of the models themselves. A response ends at its first EOS, which it keeps;
one that reaches `max_new_tokens` first is cut there and gets no EOS.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from models.sequence_logprobs import position_ids_for, response_mask
from models.timing import GENERATE, timed


@dataclass(frozen=True)
class DecodedBatch:
    """Prompts (left-padded) followed by their responses; response tensors are (B, T)."""

    sequences: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T): the prompts' mask, then 1 on response tokens up to the first EOS
    prompt_length: int  # P
    mask: torch.Tensor  # (B, T): 1 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # (B, T): log-prob of each token under the decoding distribution (0 after EOS)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]  # (B, T)


def decoding_copy(model, dtype: torch.dtype | None):
    """The model to decode with: the model itself, or a copy cast to `dtype` when that is another precision (the
    model keeps its own for scoring and training)."""
    return model if dtype is None or dtype == model.dtype else copy.deepcopy(model).to(dtype)


def encode_left_padded(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, P), padded on the left so each prompt ends where its answer begins."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device))
    finally:
        tokenizer.padding_side = padding_side


@timed(GENERATE)
@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, eos_token_id: int,
           pad_token_id: int, temperature: float | None = None, top_k: int | None = None) -> DecodedBatch:
    """One response per row of the left-padded prompts (B, P): greedy when `temperature` is None, else sampled
    at `temperature` (from the `top_k` most likely tokens when given). After its EOS a row is filled with
    `pad_token_id`, which the response mask leaves out. Each token's log-prob comes with it, under the
    distribution it was drawn from (greedy: temperature 1): scoring the same ids again gives the same values."""
    if max_new_tokens < 1 or (temperature is not None and temperature <= 0):
        raise ValueError(f"decoding needs max_new_tokens >= 1 and a temperature > 0 (or None for greedy), got "
                         f"{max_new_tokens} and {temperature}")
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
            token, logprob = _next_token(output.logits[:, -1].float(), temperature, top_k)  # (B,) each
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
    return DecodedBatch(sequences=torch.cat([input_ids, response_ids], dim=1),
                        attention_mask=torch.cat([attention_mask, response.to(attention_mask.dtype)], dim=1),
                        prompt_length=input_ids.shape[1], mask=response,
                        logprobs=torch.stack(logprobs, dim=1) * response)


def _next_token(logits: torch.Tensor, temperature: float | None, top_k: int | None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token (B,) from the last position's logits (B, V), and its log-prob (B,)."""
    if temperature is None:
        token = logits.argmax(dim=-1)
        step_logprobs = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits / temperature
        if top_k is not None and top_k < scaled.shape[-1]:
            kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        step_logprobs = torch.log_softmax(scaled, dim=-1)
        token = torch.multinomial(step_logprobs.exp(), num_samples=1).squeeze(1)
    return token, step_logprobs.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Continue each (already formatted) prompt; returns only the new text. Greedy unless `do_sample`, which
    samples at `temperature` from the `top_k` most likely tokens (50, as transformers' `generate` does by
    default; None for the whole vocabulary).

    `dtype` (for example bfloat16) decodes with `decoding_copy`, dropped afterwards. On a CPU with AVX512-BF16,
    SmolLM2-135M decodes 1.2-1.7x faster in bf16 (benchmarks/generation_benchmark.py, docs/performance.md);
    whether the answers still agree is measured, not assumed (benchmarks/probes/bf16_agreement.py)."""
    decoder = decoding_copy(model, dtype)
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], decoder.device)
        decoded = decode(decoder, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         temperature=temperature if do_sample else None, top_k=top_k if do_sample else None)
        completions.extend(tokenizer.batch_decode(decoded.response_ids, skip_special_tokens=True))
    return completions
