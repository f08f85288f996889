"""Adapter folders name their base; a chain of them loads as the model training ended with, and serves."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model

from models.adapters import BASE_FILE, adapter_chain, is_adapter_folder, merge_adapters
from models.loading import load_model_and_tokenizer
from models.reward import load_reward_model
from models.saving import save_hf_model, save_trained_model
from models.tiny import build_tiny_llama, train_tokenizer
from tasks.core import paths
from tasks.core.config import load_config
from tasks.registry.hf_folders import model_chain
from tasks.registry.logged_models import log_hf_model
from tasks.run.tracking import configure_tracking

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}


@pytest.fixture
def tiny(tmp_path):
    tokenizer = train_tokenizer(["User: hello\nAssistant: hi there, friend"] * 20, 300, 64)
    model = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    return model, tokenizer, save_hf_model(model, tokenizer, tmp_path / "base")


def _trained_adapter(model, seed: int):
    """LoRA on q/v with seeded random A and (non-zero) B, so merging changes the weights reproducibly."""
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in peft.named_parameters():
        if "lora_" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    return peft


def test_an_adapter_is_saved_alone_naming_its_base_and_merges_back_exactly(tiny, tmp_path):
    model, tokenizer, base_dir = tiny
    peft = _trained_adapter(model, seed=1)
    expected = {k: v.clone() for k, v in peft.merge_and_unload().state_dict().items()}

    fresh, _ = load_model_and_tokenizer(base_dir)
    folder = save_trained_model(_trained_adapter(fresh, seed=1), tokenizer, tmp_path / "sft", "models:/m-base")
    assert is_adapter_folder(folder) and not (folder / "model.safetensors").exists()
    assert json.loads((folder / BASE_FILE).read_text()) == {"base_model": "models:/m-base", "revision": None}

    merged, _ = load_model_and_tokenizer(base_dir, adapters=[folder])
    assert merged.state_dict().keys() == expected.keys()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name


def test_without_a_base_uri_or_lora_the_whole_model_is_saved(tiny, tmp_path):
    model, tokenizer, _ = tiny
    assert (save_trained_model(model, tokenizer, tmp_path / "full", "models:/m-base") / "model.safetensors").is_file()
    folder = save_trained_model(_trained_adapter(model, seed=2), tokenizer, tmp_path / "merged", None)
    assert (folder / "model.safetensors").is_file() and not is_adapter_folder(folder)


def test_a_chain_follows_each_adapter_to_its_base(tiny, tmp_path):
    _, tokenizer, base_dir = tiny
    first = save_trained_model(_trained_adapter(load_model_and_tokenizer(base_dir)[0], 1), tokenizer,
                               tmp_path / "first", "base-uri")
    second = save_trained_model(_trained_adapter(load_model_and_tokenizer(base_dir, adapters=[first])[0], 2),
                                tokenizer, tmp_path / "second", "first-uri")
    where = {"base-uri": str(base_dir), "first-uri": str(first)}
    assert adapter_chain(str(second), where.__getitem__) == [str(base_dir), str(first), str(second)]
    # A causal-LM adapter also merges into a sequence classifier (the reward model starts from the SFT model).
    scorer, _ = load_reward_model(base_dir, adapters=[first, second], init_seed=0)
    policy, _ = load_model_and_tokenizer(base_dir, adapters=[first, second])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(scorer.state_dict()[name], policy.state_dict()[name])


def test_an_adapter_that_names_itself_is_stopped(tiny, tmp_path):
    _, tokenizer, base_dir = tiny
    folder = save_trained_model(_trained_adapter(load_model_and_tokenizer(base_dir)[0], 1), tokenizer,
                                tmp_path / "loop", "loop-uri")
    with pytest.raises(ValueError, match="more than 16 adapters deep"):
        adapter_chain(str(folder), lambda uri: str(folder))


def test_a_logged_adapter_resolves_its_base_from_mlflow_and_serves_merged(tiny, tmp_path, monkeypatch):
    _, tokenizer, base_dir = tiny
    monkeypatch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", tmp_path / "mlartifacts")
    cfg = load_config(paths.DEMO_CONFIG, [f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                          "eval.max_new_tokens=4"])
    configure_tracking(cfg)
    with mlflow.start_run():
        base_uri = log_hf_model(base_dir, cfg, "base")
        adapter = save_trained_model(_trained_adapter(load_model_and_tokenizer(base_dir)[0], 3), tokenizer,
                                     tmp_path / "adapter", base_uri)
        adapter_uri = log_hf_model(adapter, cfg, "sft")
    chain = model_chain(adapter_uri, tmp_path / "download")
    assert len(chain) == 2 and is_adapter_folder(chain[1]) and not is_adapter_folder(chain[0])
    # A local store is read in place: nothing was copied into the download folder.
    assert all(str(tmp_path / "mlartifacts") in folder for folder in chain)
    assert not (tmp_path / "download").exists() or not any((tmp_path / "download").rglob("*.safetensors"))
    merged, _ = load_model_and_tokenizer(chain[0], adapters=chain[1:])
    # Served: MLflow loads the pyfunc, which finds the base through the same resolver and merges.
    served = mlflow.pyfunc.load_model(adapter_uri)
    assert torch.equal(served.unwrap_python_model().model.state_dict()["model.layers.1.self_attn.v_proj.weight"],
                       merged.state_dict()["model.layers.1.self_attn.v_proj.weight"])
    [answer] = served.predict(pd.DataFrame({"prompt": ["hello"]}))
    assert isinstance(answer, str)


def test_merging_nothing_returns_the_model_itself(tiny):
    model, _, _ = tiny
    assert merge_adapters(model, []) is model


def test_a_logged_models_name_is_the_config_and_stage_without_what_mlflow_refuses():
    from tasks.registry.logged_models import logged_model_name

    assert logged_model_name("smollm2", "ppo") == "smollm2-ppo"
    # MLflow refuses '/', ':', '.', '%', '"' and "'" in a model name (a concurrent test run is "concurrent-0.2").
    assert logged_model_name("concurrent-0.2", "dpo") == "concurrent-0-2-dpo"
    assert logged_model_name("a/b:c%d\"e'f", "sft") == "a-b-c-d-e-f-sft"
