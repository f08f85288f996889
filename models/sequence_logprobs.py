"""Log-probs and values of sampled responses: what a rollout and an update read from a (policy, prompt + response)
batch. Shared by the policy and its frozen reference, so both score exactly the same positions."""

from __future__ import annotations

import torch


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it. (B, T) -> (B, T).

    Loop form: for each row, mask[j] = 1 while no EOS occurred strictly before position j.
    """
    is_eos = (response_ids == eos_token_id).long()  # (B, T)
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, matching what `generate` used. (B, L) -> (B, L)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp_min(0)


def response_positions(input_ids: torch.Tensor, prompt_length: int) -> int:
    """How many last positions need LM-head logits: those predicting a response token, plus the final one. The
    prompt's positions are never scored, and at 135M the head is a fifth of the model (49k-token vocabulary)."""
    return input_ids.shape[1] - prompt_length + 1


def response_logprobs(kept_logits: torch.Tensor, input_ids: torch.Tensor, prompt_length: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), log-probs (B, T)) of the response tokens at the sampling `temperature`, from logits kept
    at the last `response_positions` positions: the token at position i is predicted from position i - 1, so
    the final position predicts nothing."""
    logits = kept_logits[:, :-1].float() / temperature
    targets = input_ids[:, prompt_length:]
    return logits, torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def causal_lm_response_logprobs(model, input_ids, attention_mask, prompt_length: int,
                                temperature: float = 1.0) -> torch.Tensor:
    """Log-probs (B, T) of the response tokens under a causal LM (a frozen reference, or a policy without its
    value head), at positions that skip the left padding as sampling did."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
                   logits_to_keep=response_positions(input_ids, prompt_length)).logits
    return response_logprobs(logits, input_ids, prompt_length, temperature)[1]


def response_logprobs_and_values(model, input_ids, attention_mask, prompt_length: int, critic=None,
                                 temperature: float = 1.0):
    """Log-probs of the response tokens, the critic's values before each, and the logits. All (B, T[, V]).

    `model` is a `PolicyWithValueHead`; with a separate `critic`, values come from it instead. The logits are
    divided by the sampling `temperature`: the log-probs are those of the policy that sampled the responses,
    so the ratios and the KL are taken on-policy (as TRL's PPO does).
    """
    logits, values = model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_for(attention_mask),
                           logits_to_keep=response_positions(input_ids, prompt_length))
    if critic is not None:
        values = critic(input_ids=input_ids, attention_mask=attention_mask)
    logits, logprobs = response_logprobs(logits, input_ids, prompt_length, temperature)
    values = values[:, prompt_length - 1 : -1]  # (B, T): the value of the state each response token is chosen in
    return logprobs, values, logits
