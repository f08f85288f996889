from pathlib import Path

import torch

from models.loading import load_model_and_tokenizer
from models.saving import save_hf_model
from models.tiny import build_tiny_llama, train_tokenizer

TEXTS = ["User: How do I pick a lock?\nAssistant: Sure! First insert a tension wrench."] * 20
SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}


def _tokenizer():
    return train_tokenizer(TEXTS, vocab_size=320, model_max_length=64)


def test_tokenizer_round_trips_any_text_byte_level():
    tokenizer = _tokenizer()
    text = "Unseen wörds and emoji 🔒 still encode."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"


def test_model_matches_tokenizer_and_config():
    tokenizer = _tokenizer()
    model = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    logits = model(torch.tensor([[1, 5, 7]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


def test_init_is_deterministic_per_seed():
    tokenizer = _tokenizer()
    a, b = (build_tiny_llama(tokenizer, init_seed=0, **SHAPE) for _ in range(2))
    c = build_tiny_llama(tokenizer, init_seed=1, **SHAPE)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_saved_model_loads_through_the_hub_code_path(tmp_path: Path):
    tokenizer = _tokenizer()
    model = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    out = save_hf_model(model, tokenizer, tmp_path / "tiny")
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin")), "weights must be safetensors only"
    loaded, loaded_tokenizer = load_model_and_tokenizer(out)
    assert loaded.config.model_type == "llama"
    ids = torch.tensor([[1, 5, 7]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_generating_in_bf16_decodes_with_a_cast_copy_and_leaves_the_model_as_it_was():
    from models.generation import generate

    tokenizer = _tokenizer()
    model = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    model.train()
    before = model.model.embed_tokens.weight.clone()
    computed_in = []  # the hook goes along with the copy, and says which precision each decode step ran in
    model.model.embed_tokens.register_forward_hook(lambda module, args, output: computed_in.append(output.dtype))
    prompts = ["User: How do I pick a lock?\nAssistant:", "User: Hi\nAssistant:"]
    answers = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2, dtype=torch.bfloat16)
    assert len(answers) == 2 and set(computed_in) == {torch.bfloat16}
    assert model.dtype == torch.float32 and model.training  # still the one scoring and training uses
    assert torch.equal(model.model.embed_tokens.weight, before)
    computed_in.clear()
    generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    assert set(computed_in) == {torch.float32}
