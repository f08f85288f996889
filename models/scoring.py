"""Log-probabilities of completions under a model, and the perplexity built on them."""

from __future__ import annotations

import math

import torch

from models.losses import masked_sum


@torch.no_grad()
def completion_token_logprobs(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int):
    """Yield (token_logprobs, completion_mask) per batch, both (B, T-1): log p(token_t | tokens_<t)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = prompts[start : start + batch_size]
            batch_completions = completions[start : start + batch_size]
            input_ids, completion_mask = _tokenize_pairs(tokenizer, batch_prompts, batch_completions)
            attention_mask = (input_ids != -1).long()
            input_ids = input_ids.clamp_min(0)  # padding positions are masked out below
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
            targets = input_ids[:, 1:].to(model.device)  # (B, T-1)
            # Row by row: a (B, T, V) log-softmax of a 49k vocabulary would double the memory of the logits.
            token_logprobs = torch.stack([
                torch.log_softmax(row_logits[:-1].float(), dim=-1).gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
                for row_logits, row_targets in zip(logits, targets, strict=True)
            ])  # (B, T-1)
            yield token_logprobs.cpu(), completion_mask[:, 1:]
    finally:
        model.train(was_training)


def _tokenize_pairs(tokenizer, prompts: list[str], completions: list[str]):
    """Right-padded ids (pad = -1) and a mask that is 1 on completion tokens, including the final EOS."""
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"][len(prompt_ids) :]
        ids = prompt_ids + completion_ids + [tokenizer.eos_token_id]
        rows.append(ids)
        masks.append([0] * len(prompt_ids) + [1] * (len(completion_ids) + 1))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(zip(rows, masks)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        completion_mask[i, : len(mask)] = torch.tensor(mask)
    return input_ids, completion_mask


def completion_logprob_totals(model, tokenizer, prompts: list[str], completions: list[str],
                              batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the summed log p of its completion tokens (with the final EOS), and how many tokens that is.

    Returns (logprob_sums, token_counts), both (N,).
    """
    sums, counts = [], []
    for token_logprobs, mask in completion_token_logprobs(model, tokenizer, prompts, completions, batch_size):
        sums.append(masked_sum(token_logprobs, mask, dim=-1))  # (B,)
        counts.append(mask.sum(dim=-1))  # (B,)
    return torch.cat(sums), torch.cat(counts)


def pooled_perplexity(logprob_sums: torch.Tensor, token_counts: torch.Tensor) -> float:
    """exp(mean negative log-likelihood per completion token), pooled over the completions given (N,).

    Loop form: exp(-sum(logprob_sums[i] for i) / sum(token_counts[i] for i)).
    """
    total_tokens = int(token_counts.sum())
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one completion token")
    return math.exp(-logprob_sums.double().sum().item() / total_tokens)
