"""KL(policy || reference) estimated on the policy's own samples: what the evaluation's KL gate and the training
monitors' KL budget both read.

The samples come from `models.generation.decode` at temperature 1 over the whole vocabulary, so they are drawn
from exactly the distribution whose log-probabilities are scored: no re-tokenization, no top-k, and no EOS added
to an answer the token limit cut.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.generation import DecodedBatch, decode, encode_left_padded
from models.metrics import sampled_kl


def kl_to_reference_samples(policy, reference_logprobs: Callable[[DecodedBatch], torch.Tensor], tokenizer,
                            prompts: list[str], *, max_new_tokens: int, batch_size: int,
                            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(policy || reference) per answer (N,) and each answer's token count (N,): one answer per prompt sampled
    from the policy at temperature 1 over its whole vocabulary, with `reference_logprobs(batch)` -> (B, T)
    scoring the same token ids. The estimator is `models.metrics.sampled_kl`. Seeded, without touching the
    global random state."""
    per_answer, tokens = [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], policy.device)
            sampled = decode(policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                             temperature=1.0, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
            per_answer.append(sampled_kl(sampled.logprobs, reference_logprobs(sampled), sampled.mask))  # (B,)
            tokens.append(sampled.mask.sum(dim=1))  # (B,)
    return torch.cat(per_answer), torch.cat(tokens)
