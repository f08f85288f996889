"""SFT smoke tests on the tiny model: every trainable parameter moves; LoRA moves only what it adapts."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from models.adapters import BASE_FILE
from tasks.base_model import run_base_model
from tasks.core import paths
from tasks.core.config import load_config
from tasks.core.lineage import Lineage
from tasks.registry.logged_models import resolve_model_source
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config
from tests.helpers.models import merged_weights

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")


def _weights(uri: str, tmp_path, name: str) -> dict[str, torch.Tensor]:
    folder = resolve_model_source(uri, tmp_path / name)
    return load_file(f"{folder}/model.safetensors")


def _train(cfg, tmp_path):
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    base = run_base_model(cfg, LINEAGE, data=data)
    sft = run_sft(cfg, LINEAGE, base=base, data=data)
    return _weights(base.model_uri, tmp_path, "base"), _weights(sft.model_uri, tmp_path, "sft"), sft


def test_full_finetune_changes_every_parameter(tmp_path, demo_data_dir, tracked):
    cfg = reduced_config(tmp_path, demo_data_dir, "sft.max_steps=3", "sft.save_steps=100")
    before, after, sft = _train(cfg, tmp_path)
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert sft.metrics["sft/global_step"] == 3
    logged = mlflow.get_run(sft.run_id).data.metrics  # where its time went: training, and no generation
    assert logged["profile/train_seconds"] > 0 and logged["profile/generate_seconds"] == 0


def test_lora_stores_only_adapters_that_change_only_the_adapted_projections(tmp_path, demo_data_dir, tracked):
    cfg = reduced_config(tmp_path, demo_data_dir, "sft.max_steps=3", "sft.save_steps=100", "sft.lora.enabled=true",
                         "sft.learning_rate=0.05")
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    base = run_base_model(cfg, LINEAGE, data=data)
    sft = run_sft(cfg, LINEAGE, base=base, data=data)
    folder = Path(resolve_model_source(sft.model_uri, tmp_path / "sft"))
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["adapter_model.safetensors"]  # no model copy
    assert json.loads((folder / BASE_FILE).read_text())["base_model"] == base.model_uri
    before = merged_weights(base.model_uri, tmp_path / "base")
    after = merged_weights(sft.model_uri, tmp_path / "merged")  # base + adapters, as every stage loads it
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the adapters must change the merged weights"
    assert all(("q_proj" in name or "v_proj" in name) for name in changed), changed


def test_a_pretrained_local_path_goes_through_the_hub_loading_path(tmp_path, demo_data_dir, tracked):
    """The GPU configs name a hub id; here the same `pretrained` path is exercised with a local folder."""
    tiny_cfg = reduced_config(tmp_path, demo_data_dir)
    configure_tracking(tiny_cfg)
    tiny = run_base_model(tiny_cfg, LINEAGE, data=run_validate(tiny_cfg, LINEAGE))
    tiny_dir = resolve_model_source(tiny.model_uri, tmp_path / "as_hub_repo")

    cfg = reduced_config(tmp_path, demo_data_dir, f"model.pretrained={tiny_dir}", "sft.max_steps=2")
    base = run_base_model(cfg, LINEAGE)
    assert base.model_uri == tiny_dir
    data = run_validate(cfg, LINEAGE, base=base)
    sft = run_sft(cfg, LINEAGE, base=base, data=data)
    assert sft.model_uri.startswith("models:/")


def test_gpu_config_names_a_hub_model_and_validates():
    cfg = load_config(paths.PIPELINES_DIR / "gpu-qwen.yaml")
    assert cfg.model.pretrained == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.model.prompt_format == "chat_template" and cfg.sft.lora.enabled


# The real SFT recipe on the tiny model, 8 steps, one logged loss per step. Step 1 sits just below ln(1024) = 6.93,
# the loss of a uniform guess over the ~1k-token vocabulary: the random model knows nothing yet. Warmup makes
# step 2 barely move (its learning rate is still near 0), then the loss falls every step. A change to the data,
# the tokenizer, the loss masking or the optimiser settings moves these numbers.
PINNED_SFT_LOSSES = [6.7877, 6.7831, 6.504, 6.315, 6.187, 6.058, 5.945, 5.908]


def test_sft_recipe_reproduces_its_pinned_loss_curve(tmp_path, demo_data_dir, tracked):
    from mlflow import MlflowClient

    cfg = reduced_config(tmp_path, demo_data_dir, "sft.max_steps=8", "sft.logging_steps=1", "sft.save_steps=100")
    _, _, sft = _train(cfg, tmp_path)
    history = sorted(MlflowClient().get_metric_history(sft.run_id, "sft/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 9))
    assert [m.value for m in history] == pytest.approx(PINNED_SFT_LOSSES, abs=2e-3)
