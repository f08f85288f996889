"""Batched generation with left padding and the KV cache."""

from __future__ import annotations

import torch


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
) -> list[str]:
    """Continue each (already formatted) prompt; returns only the new text. Greedy unless `do_sample`, which
    samples at `temperature` (with transformers' default top-k of 50)."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models must see the prompt flush against the new tokens
    was_training = model.training
    model.eval()
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            output_ids = model.generate(
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
        model.train(was_training)
    return completions
