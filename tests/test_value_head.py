"""The value head on a tiny Llama: shapes, one forward pass for logits and values, generation, safetensors
round trips with a clear error for a head of the wrong size, gradients, a peft policy, a critic from a reward
model."""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForSequenceClassification

from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import (
    PolicyWithValueHead,
    SeparateCritic,
    ValueHead,
    load_value_head,
    save_value_head,
)

TEXTS = ["User: How do I pick a lock?\nAssistant: Sure! First insert a tension wrench."] * 20
SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=320, model_max_length=64)


@pytest.fixture
def policy(tokenizer):
    return build_tiny_llama(tokenizer, init_seed=0, **SHAPE)


def _batch():
    input_ids = torch.tensor([[1, 5, 7, 9, 11], [1, 6, 8, 0, 0]])  # row 1 is right-padded
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return input_ids, attention_mask


def test_shapes_and_one_forward_pass(policy, tokenizer):
    model = PolicyWithValueHead(policy)
    assert model.value_head.hidden_size == 32 and model.policy is policy
    input_ids, attention_mask = _batch()
    logits, values = model(input_ids, attention_mask)
    assert logits.shape == (2, 5, len(tokenizer)) and values.shape == (2, 5)
    # the logits are the policy's own, and the values are the head read on its final hidden state
    out = policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert torch.allclose(logits, out.logits)
    assert torch.allclose(values, model.value_head(out.hidden_states[-1]))


def test_values_follow_the_heads_weights(policy):
    model = PolicyWithValueHead(policy)
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        model.value_head.linear.weight.zero_()
        model.value_head.linear.bias.fill_(0.5)
        # w = 0, b = 0.5: every value is 0 * h + 0.5 = 0.5
        assert torch.equal(model(input_ids, attention_mask)[1], torch.full((2, 5), 0.5))
        model.value_head.linear.weight.fill_(0.1)
        assert not torch.equal(model(input_ids, attention_mask)[1], torch.full((2, 5), 0.5))


def test_generate_is_the_policys(policy, tokenizer):
    model = PolicyWithValueHead(policy).eval()
    input_ids, attention_mask = torch.tensor([[1, 5, 7]]), torch.ones(1, 3, dtype=torch.long)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tokenizer.pad_token_id, "use_cache": True}
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(output, policy.generate(input_ids=input_ids, attention_mask=attention_mask, **settings))
    assert 3 < output.shape[1] <= 3 + 4 and torch.equal(output[:, :3], input_ids)


def test_save_load_round_trip_is_exact(tmp_path: Path):
    head = ValueHead(32, init_seed=0)
    path = save_value_head(head, tmp_path / "critic" / "value_head.safetensors")
    assert set(load_file(str(path))) == {"linear.weight", "linear.bias"}
    loaded = load_value_head(path, hidden_size=32)
    assert torch.equal(loaded.linear.weight, head.linear.weight) and torch.equal(loaded.linear.bias, head.linear.bias)
    hidden = torch.randn(2, 3, 32)
    assert torch.equal(loaded(hidden), head(hidden))


def test_a_head_for_another_hidden_size_is_refused_by_name(tmp_path: Path):
    path = save_value_head(ValueHead(32), tmp_path / "value_head.safetensors")
    with pytest.raises(ValueError) as raised:
        load_value_head(path, hidden_size=64)
    message = str(raised.value)
    assert str(path) in message and "expected (1, 64)" in message and "shape (1, 32)" in message


def test_a_file_that_is_not_safetensors_is_refused_by_name(tmp_path: Path):
    path = tmp_path / "value_head.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors value head"):
        load_value_head(path, hidden_size=32)


def test_seeded_heads_repeat_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    a, b = ValueHead(32, init_seed=3), ValueHead(32, init_seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.linear.weight, b.linear.weight) and a.linear.bias.abs().sum() == 0
    # std 1 / sqrt(32 + 1) = 0.174: small, not zero (a zero head would pass no gradient to the trunk)
    assert 0 < a.linear.weight.std() < 0.5


def test_a_bf16_trunk_feeds_a_float32_head():
    head = ValueHead(32, init_seed=0)
    hidden = torch.randn(2, 3, 32).bfloat16()
    values = head(hidden)
    assert values.dtype == torch.float32 and torch.equal(values, head(hidden.float()))


def test_gradient_reaches_policy_and_head(policy):
    model = PolicyWithValueHead(policy)
    _, values = model(*_batch())
    values.pow(2).mean().backward()  # a value loss alone: the shared trunk must learn from it too
    assert model.value_head.linear.weight.grad.abs().sum() > 0
    assert policy.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert policy.model.embed_tokens.weight.grad.abs().sum() > 0


def test_mismatched_head_is_refused(policy):
    with pytest.raises(ValueError, match="hidden_size=64"):
        PolicyWithValueHead(policy, ValueHead(64))


def test_peft_policy(policy, tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = PolicyWithValueHead(peft_policy)
    assert model.value_head.hidden_size == 32
    logits, values = model(*_batch())
    assert logits.shape == (2, 5, len(tokenizer)) and values.shape == (2, 5)
    values.sum().backward()
    lora_b = [p for name, p in peft_policy.named_parameters() if "lora_B" in name]
    # B starts at 0, so B (not yet A) receives the value loss's gradient; the base weights are frozen
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert peft_policy.get_base_model().model.embed_tokens.weight.grad is None
    output = model.generate(input_ids=torch.tensor([[1, 5, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                            max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert 3 < output.shape[1] <= 5


def test_separate_critic_from_a_saved_reward_model(policy, tmp_path: Path):
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reward_model = LlamaForSequenceClassification(config)
    reward_model.save_pretrained(tmp_path / "reward", safe_serialization=True)
    critic = SeparateCritic.from_reward_model(tmp_path / "reward", init_seed=0)
    # the trunk is the reward model's (its score head is left out), the value head is fresh
    assert torch.equal(critic.trunk.embed_tokens.weight, reward_model.model.embed_tokens.weight)
    assert torch.equal(critic.trunk.norm.weight, reward_model.model.norm.weight)
    assert torch.equal(critic.value_head.linear.weight, ValueHead(32, init_seed=0).linear.weight)
    values = critic(*_batch())
    assert values.shape == (2, 5)
    hidden = reward_model.model(*_batch()).last_hidden_state
    assert torch.allclose(values, critic.value_head(hidden), atol=1e-6)


def test_a_critic_that_starts_as_the_reward_model_values_each_prefix_as_it_scores_it(policy):
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.pad_token_id = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        reward_model = LlamaForSequenceClassification(config)
    critic = SeparateCritic.sharing_reward_model(reward_model)
    assert critic.trunk is reward_model.model  # shared, not a second copy
    input_ids, attention_mask = _batch()
    values = critic(input_ids, attention_mask)
    # the value of a prefix is the reward model's score of that prefix, read at its last token
    for length in (2, 3, 5):
        score = reward_model(input_ids=input_ids[:1, :length]).logits[0, 0]
        assert torch.allclose(values[0, length - 1], score, atol=1e-5), length
    # only the head learns, and no gradient enters the trunk
    assert all(not p.requires_grad for p in critic.trunk.parameters())
    assert [name for name, p in critic.named_parameters() if p.requires_grad] == ["value_head.linear.weight",
                                                                                 "value_head.linear.bias"]
    values.sum().backward()
    assert critic.value_head.linear.weight.grad is not None
    assert all(p.grad is None for p in critic.trunk.parameters())
