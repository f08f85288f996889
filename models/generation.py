"""Batched generation with left padding and the KV cache, in the model's precision or a lower one."""

from __future__ import annotations

import copy

import torch


def decoding_copy(model, dtype: torch.dtype | None):
    """The model to decode with: the model itself, or a copy cast to `dtype` when that is another precision (the
    model keeps its own for scoring and training)."""
    return model if dtype is None or dtype == model.dtype else copy.deepcopy(model).to(dtype)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Continue each (already formatted) prompt; returns only the new text. Greedy unless `do_sample`, which
    samples at `temperature` (with transformers' default top-k of 50).

    `dtype` (for example bfloat16) decodes with `decoding_copy`, dropped afterwards. On a CPU with AVX512-BF16,
    SmolLM2-135M decodes 1.2-1.7x faster in bf16 (benchmarks/generation_benchmark.py, docs/performance.md);
    whether the answers still agree is measured, not assumed (benchmarks/probes/bf16_agreement.py)."""
    decoder = decoding_copy(model, dtype)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models must see the prompt flush against the new tokens
    was_training = decoder.training
    decoder.eval()
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(decoder.device)
            output_ids = decoder.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                **({"temperature": temperature} if do_sample else {}),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            new_ids = output_ids[:, batch["input_ids"].shape[1] :]  # (B, T_new)
            completions.extend(tokenizer.batch_decode(new_ids, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        decoder.train(was_training)
    return completions
