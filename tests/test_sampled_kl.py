"""KL(policy || reference) from sampled answers against the exact KL, enumerated over every answer a tiny model
with a 64-token vocabulary can give in at most two tokens.

The evaluation's KL (`tasks/evaluate.py`) and PPO's rollouts use this path: `models.generation.decode` draws from
the full softmax at temperature 1 (no top-k: a vocabulary above transformers' default of 50 would show it), the
answer keeps its EOS or, truncated, gets none, and both models score the same token ids.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.generation import decode
from models.metrics import sampled_kl
from models.sequence_logprobs import causal_lm_response_logprobs

VOCAB, PAD, EOS, MAX_NEW = 64, 0, 1, 2
PROMPTS = ([5, 9, 3], [7])  # of different lengths: the batch is left-padded


def _tiny(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                         pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # spread the next-token distributions, so the two models differ measurably
        model.lm_head.weight.mul_(8.0)
    return model


@torch.no_grad()
def _next_token_logprobs(model, contexts: list[list[int]]) -> torch.Tensor:
    """log p(. | context) for unpadded contexts of one length, straight from a full forward pass. (N, V)"""
    return torch.log_softmax(model(input_ids=torch.tensor(contexts)).logits[:, -1].double(), dim=-1)


def _exact(policy, reference, prompt: list[int]) -> tuple[float, float, dict[tuple[int, ...], tuple[float, float]]]:
    """(KL, P(answer ends with EOS), {answer: (log pi, log pi_ref)}) over every answer of at most MAX_NEW tokens."""
    answers: dict[tuple[int, ...], tuple[float, float]] = {}
    first_p, first_r = (_next_token_logprobs(m, [prompt])[0] for m in (policy, reference))
    continued = [a for a in range(VOCAB) if a != EOS]
    second_p, second_r = (_next_token_logprobs(m, [prompt + [a] for a in continued]) for m in (policy, reference))
    answers[(EOS,)] = (first_p[EOS].item(), first_r[EOS].item())
    for row, a in enumerate(continued):
        for b in range(VOCAB):  # EOS ends the answer; any other token truncates it at MAX_NEW
            answers[(a, b)] = ((first_p[a] + second_p[row, b]).item(), (first_r[a] + second_r[row, b]).item())
    kl = sum(math.exp(lp) * (lp - lr) for lp, lr in answers.values())
    ends = sum(math.exp(lp) for answer, (lp, _) in answers.items() if answer[-1] == EOS)
    assert math.isclose(sum(math.exp(lp) for lp, _ in answers.values()), 1.0, rel_tol=1e-9)
    return kl, ends, answers


def test_sampled_kl_matches_the_exact_kl_on_the_same_token_ids():
    policy, reference = _tiny(0), _tiny(1)
    n = 4000
    width = max(map(len, PROMPTS))
    rows = [prompt for prompt in PROMPTS for _ in range(n)]
    input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in rows])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    torch.manual_seed(0)
    sampled = decode(policy, input_ids, attention_mask, max_new_tokens=MAX_NEW, temperature=1.0,
                     eos_token_id=EOS, pad_token_id=PAD)
    with torch.no_grad():
        scored = [causal_lm_response_logprobs(m, sampled.sequences, sampled.attention_mask, sampled.prompt_length)
                  for m in (policy, reference)]
    # The log-probs the sampler hands back are the policy's own score of the same ids.
    assert torch.allclose(sampled.logprobs, scored[0] * sampled.mask, atol=1e-5)
    kl = sampled_kl(sampled.logprobs, scored[1], sampled.mask).double()  # (2n,), as the evaluation takes it

    for index, prompt in enumerate(PROMPTS):
        exact_kl, exact_ends, answers = _exact(policy, reference, prompt)
        assert exact_kl > 0.1  # the check below could not tell a broken estimate from a near-zero one otherwise
        mine = slice(index * n, (index + 1) * n)
        ids, mask = sampled.response_ids[mine], sampled.mask[mine]
        # Each answer's estimate is exactly log pi(y) - log pi_ref(y) of the enumerated answer: the same ids,
        # scored through the left padding; a truncated answer has no EOS appended.
        for row in range(0, n, 97):
            answer = tuple(ids[row][mask[row].bool()].tolist())
            log_p, log_r = answers[answer]
            assert kl[mine][row].item() == pytest.approx(log_p - log_r, abs=1e-4), answer
        ended = ((ids == EOS) & mask.bool()).any(dim=1).double()
        # The average over samples from the policy: within 4 standard errors of the exact values.
        for estimate, exact in ((kl[mine], exact_kl), (ended, exact_ends)):
            standard_error = estimate.std().item() / math.sqrt(n)
            assert abs(estimate.mean().item() - exact) < 4 * standard_error, (estimate.mean().item(), exact)


def test_top_k_sampling_would_be_caught():
    """The same check fails for samples drawn with transformers' default top-k of 50: the KL of a truncated
    policy is not the policy's."""
    policy, reference = _tiny(0), _tiny(1)
    prompt = PROMPTS[0]
    exact_kl, _, answers = _exact(policy, reference, prompt)
    torch.manual_seed(0)
    drawn = policy.generate(torch.tensor([prompt] * 4000), attention_mask=torch.ones(4000, len(prompt)).long(),
                            do_sample=True, top_k=50, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=EOS)
    estimates = []
    for answer in drawn[:, len(prompt):].tolist():
        answer = tuple(answer[: answer.index(EOS) + 1] if EOS in answer else answer)
        estimates.append(answers[answer][0] - answers[answer][1])
    estimate = torch.tensor(estimates, dtype=torch.double)
    assert abs(estimate.mean().item() - exact_kl) > 4 * estimate.std().item() / math.sqrt(len(estimates))
