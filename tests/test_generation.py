"""The one decoding loop (`models.generation.decode`) against transformers' own `generate` on a tiny model with
left-padded prompts of different lengths: the same greedy tokens; sampling that honours its temperature and
top-k, with each token's log-prob under the distribution it was drawn from."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.generation import decode, generate
from models.tiny import build_tiny_llama, train_tokenizer

VOCAB, PAD, EOS = 96, 0, 1
PROMPTS = ([5, 9, 3, 17, 4], [7, 2], [11, 12, 13])


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _batch(rows=PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (width - len(p)) + list(p) for p in rows])
    return input_ids, (input_ids != PAD).long()


def test_greedy_decoding_gives_the_tokens_transformers_generate_gives():
    model = _model()
    input_ids, attention_mask = _batch()
    ours = decode(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD)
    theirs = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                            eos_token_id=EOS, pad_token_id=PAD)[:, input_ids.shape[1]:]
    assert theirs.shape[1] >= 2 and len(set(map(tuple, theirs.tolist()))) == len(PROMPTS)  # varied answers
    assert torch.equal(ours.response_ids, theirs[:, : ours.response_ids.shape[1]])
    # Each token is the argmax, and its log-prob is the model's at temperature 1.
    logits = model(input_ids=ours.sequences, attention_mask=ours.attention_mask).logits[:, input_ids.shape[1] - 1:-1]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, ours.response_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ours.logprobs, expected * ours.mask, atol=1e-5)


def test_sampling_honours_its_temperature_and_top_k():
    model = _model()
    input_ids, attention_mask = _batch([PROMPTS[0]] * 3000)
    torch.manual_seed(0)
    cold = decode(model, input_ids[:8], attention_mask[:8], max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD,
                  temperature=1e-4)
    greedy = decode(model, input_ids[:8], attention_mask[:8], max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(cold.response_ids, greedy.response_ids)  # a temperature near 0 is greedy
    sampled = decode(model, input_ids, attention_mask, max_new_tokens=1, eos_token_id=EOS, pad_token_id=PAD,
                     temperature=1.0, top_k=5)
    logits = model(input_ids=input_ids[:1], attention_mask=attention_mask[:1]).logits[0, -1]
    top = logits.topk(5)
    drawn = sampled.response_ids[:, 0]
    assert set(drawn.tolist()) == set(top.indices.tolist())  # only the top 5, and each of them in 3000 draws
    renormalised = torch.log_softmax(top.values, -1)
    for token, logprob in zip(top.indices.tolist(), renormalised.tolist(), strict=True):
        assert sampled.logprobs[drawn == token, 0].allclose(torch.tensor(logprob), atol=1e-5)
        assert abs((drawn == token).float().mean().item() - torch.tensor(logprob).exp().item()) < 0.04


def test_generate_samples_at_the_temperature_it_is_given():
    tokenizer = train_tokenizer(["User: How do I bake bread?\nAssistant: Mix flour, water and yeast."] * 20,
                                vocab_size=320, model_max_length=64)
    model = build_tiny_llama(tokenizer, init_seed=0, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)
    prompts = ["User: How do I bake bread?\nAssistant:"] * 6
    greedy = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6)
    torch.manual_seed(0)
    cold = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6, do_sample=True, temperature=1e-4)
    torch.manual_seed(0)
    hot = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6, do_sample=True, temperature=5.0,
                   top_k=None)
    assert cold == greedy
    assert len(set(hot)) > 1


def test_decoding_refuses_a_temperature_that_is_not_positive():
    model = _model()
    input_ids, attention_mask = _batch()
    with pytest.raises(ValueError, match="temperature > 0"):
        decode(model, input_ids, attention_mask, max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
