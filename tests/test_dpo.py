"""DPO on the tiny model: parameters move, every loss type runs, reference log-probs are cached by key."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from tasks.base_model import run_base_model
from tasks.core.lineage import Lineage
from tasks.dpo import _setup_trainer, run_dpo
from tasks.registry.logged_models import resolve_model_source
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.training.reference_logps import KEY_TAG, ReferenceLogpsCache
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
SHORT = ("sft.max_steps=20", "dpo.max_steps=2", "dpo.save_steps=100")


@pytest.fixture
def stages(tmp_path, demo_data_dir, tracked):
    """Base, validated data and a briefly trained SFT model, built once per test with the plain functions."""
    def build(data_dir=demo_data_dir, *overrides):
        cfg = reduced_config(tmp_path, data_dir, *SHORT, *overrides)
        configure_tracking(cfg)
        data = run_validate(cfg, LINEAGE)
        base = run_base_model(cfg, LINEAGE, data=data)
        return cfg, data, run_sft(cfg, LINEAGE, base=base, data=data)
    return build


def _weights(uri: str, where: Path) -> dict[str, torch.Tensor]:
    return load_file(f"{resolve_model_source(uri, where)}/model.safetensors")


def test_dpo_moves_every_parameter(stages, tmp_path):
    cfg, data, sft = stages()
    dpo = run_dpo(cfg, LINEAGE, sft=sft, data=data)
    before, after = _weights(sft.model_uri, tmp_path / "a"), _weights(dpo.model_uri, tmp_path / "b")
    assert [name for name in before if torch.equal(before[name], after[name])] == []
    assert dpo.metrics["dpo/global_step"] == 2


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_other_loss_types_train(stages, loss_type):
    cfg, data, sft = stages()
    cfg = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"loss_type": loss_type})})
    dpo = run_dpo(cfg, LINEAGE, sft=sft, data=data)
    assert torch.isfinite(torch.tensor(dpo.metrics["dpo/final_loss"]))


def test_reference_logps_hit_on_same_key_and_miss_when_model_or_data_change(stages, tmp_path, demo_data_dir):
    cfg, data, sft = stages()
    first = run_dpo(cfg, LINEAGE, sft=sft, data=data)
    assert first.metrics["dpo/reference_cache_hit"] == 0.0

    # A different DPO setting keeps the reference, data and tokenizer: the log-probs are reused.
    tuned = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"beta": 0.5})})
    second = run_dpo(tuned, LINEAGE, sft=sft, data=data)
    assert second.metrics["dpo/reference_cache_hit"] == 1.0
    stored = _stored_logps(first.run_id, tmp_path / "first")
    reused = _stored_logps(second.run_id, tmp_path / "second") if _has_logps(second.run_id) else stored
    assert torch.equal(stored["ref_chosen_logps"], reused["ref_chosen_logps"])

    # Another reference model (SFT trained one step longer): a miss.
    longer = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"max_steps": 21})})
    base = run_base_model(longer, LINEAGE, data=data)
    other_sft = run_sft(longer, LINEAGE, base=base, data=data)
    assert run_dpo(longer, LINEAGE, sft=other_sft, data=data).metrics["dpo/reference_cache_hit"] == 0.0

    # Other preference data (one pair edited): a miss.
    edited_dir = tmp_path / "edited"
    edited_dir.mkdir()
    for path in Path(demo_data_dir).iterdir():
        (edited_dir / path.name).write_bytes(path.read_bytes())
    rows = (edited_dir / "preferences_train.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    row["chosen"] = " I can't help with that at all."
    rows[0] = json.dumps(row)
    (edited_dir / "preferences_train.jsonl").write_text("\n".join(rows) + "\n")
    edited_cfg, edited_data, _ = stages(edited_dir)
    assert run_dpo(edited_cfg, LINEAGE, sft=sft, data=edited_data).metrics["dpo/reference_cache_hit"] == 0.0


def _has_logps(run_id: str) -> bool:
    return bool(mlflow.MlflowClient().list_artifacts(run_id, "reference_logps"))


def _stored_logps(run_id: str, where: Path) -> dict[str, torch.Tensor]:
    assert mlflow.get_run(run_id).data.tags[KEY_TAG]
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reference_logps/train.safetensors",
                                                dst_path=str(where))
    return load_file(local)


def test_lora_reference_is_the_adapter_disabled_base_not_a_copy(stages, tmp_path):
    cfg, data, sft = stages()
    cfg = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"lora": cfg.dpo.lora.model_copy(
        update={"enabled": True})})})
    from models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(resolve_model_source(sft.model_uri, tmp_path / "sft"))
    cache = ReferenceLogpsCache("lora-test", tmp_path / "ref")
    with mlflow.start_run():
        trainer = _setup_trainer(cfg, model, tokenizer, Path(data.outputs["preferences_train"]), tmp_path / "ckpt",
                                 cache)
    assert trainer.ref_model is None
    assert hasattr(trainer.model, "disable_adapter")
    # The precomputed reference log-probs equal the SFT model's own: the adapter was off when they were taken.
    plain_model, _ = load_model_and_tokenizer(resolve_model_source(sft.model_uri, tmp_path / "sft2"))
    with mlflow.start_run():
        plain = _setup_trainer(cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"lora": cfg.dpo.lora.model_copy(
            update={"enabled": False})})}), plain_model, tokenizer, Path(data.outputs["preferences_train"]),
            tmp_path / "ckpt2", ReferenceLogpsCache("plain-test", tmp_path / "ref2"))
    assert torch.allclose(torch.tensor(trainer.train_dataset["ref_chosen_logps"]),
                          torch.tensor(plain.train_dataset["ref_chosen_logps"]), atol=1e-4)


def test_bf16_mixed_precision_computes_in_bf16_keeps_float32_weights_and_its_own_reference_logps(
        stages, tmp_path, monkeypatch):
    cfg, data, sft = stages()
    assert run_dpo(cfg, LINEAGE, sft=sft, data=data).metrics["dpo/reference_cache_hit"] == 0.0
    computed = set()
    linear_forward = torch.nn.Linear.forward

    def recording(self, x):
        out = linear_forward(self, x)
        computed.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    mixed = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"bf16": True})})
    dpo = run_dpo(mixed, LINEAGE, sft=sft, data=data)
    # fp32 reference log-probs are not reused for a policy computed in bf16
    assert dpo.metrics["dpo/reference_cache_hit"] == 0.0
    assert mlflow.get_run(dpo.run_id).data.tags["alignflow.ref_logps.precision"] == "bf16"
    assert torch.bfloat16 in computed
    assert {tensor.dtype for tensor in _weights(dpo.model_uri, tmp_path / "mixed").values()} == {torch.float32}
