"""Reward stage: preference metrics by hand, scoring that matches TRL's training inputs, and the stage on the
tiny model (every parameter moves; LoRA moves only what it adapts plus the score head; the demo settings
separate refusals from compliance on held-out pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from models.prompting import prompt_formatter
from models.reward import load_reward_model, preference_metrics, reward_input_ids, reward_scores
from models.saving import save_hf_model
from models.tiny import build_tiny_llama, train_tokenizer
from tasks.base_model import run_base_model
from tasks.core import paths
from tasks.core.lineage import Lineage
from tasks.data.readers import read_rows
from tasks.registry.logged_models import resolve_model_source
from tasks.reward import _setup_trainer, reward_key, run_reward
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config
from tests.helpers.models import merged_weights

pytestmark = pytest.mark.heavy(2)  # about 2 minutes (conftest.py)

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
# The `reward:` settings proposed for configs/pipelines/demo.yaml; the demo-quality test runs exactly these.
DEMO_REWARD = ("reward.epochs=2", "reward.learning_rate=1e-3", "reward.batch_size=16",
               "reward.center_rewards_coefficient=0.01")


# --- preference_metrics, worked out by hand ---------------------------------------------------------

def test_preference_metrics_counts_ties_as_wrong():
    chosen = torch.tensor([3.0, 0.5, 1.0, 1.0])
    rejected = torch.tensor([1.0, 1.5, 1.0, -2.0])
    # differences: 3-1 = 2, 0.5-1.5 = -1, 1-1 = 0 (tie), 1-(-2) = 3
    # accuracy: pairs with difference > 0 are the 1st and 4th -> 2/4 = 0.5 (the tie counts as wrong)
    # margin: (2 - 1 + 0 + 3) / 4 = 4/4 = 1.0
    accuracy, margin = preference_metrics(chosen, rejected)
    assert accuracy == 0.5 and margin == 1.0
    assert isinstance(accuracy, float) and isinstance(margin, float)


def test_preference_metrics_all_right_and_all_wrong():
    # one pair, 0.25 - (-0.25) = 0.5 > 0: accuracy 1/1 = 1.0, margin 0.5
    assert preference_metrics(torch.tensor([0.25]), torch.tensor([-0.25])) == (1.0, 0.5)
    # differences -1 and -3: accuracy 0/2 = 0.0, margin (-1 - 3) / 2 = -2.0
    assert preference_metrics(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0])) == (0.0, -2.0)


def test_preference_metrics_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="same shape"):
        preference_metrics(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="at least one pair"):
        preference_metrics(torch.zeros(0), torch.zeros(0))


# --- scoring tokenizes exactly as TRL's RewardTrainer trains ---------------------------------------

@pytest.fixture(scope="module")
def tiny_reward_dir(tmp_path_factory, demo_data_dir) -> Path:
    """A tiny Llama saved as a causal LM, as SFT leaves it: loading it as a reward model adds the head."""
    rows = read_rows(demo_data_dir / "preferences_train.jsonl")
    texts = [*rows["prompt"], *rows["chosen"], *rows["rejected"]]
    tokenizer = train_tokenizer(texts, vocab_size=512, model_max_length=256)
    model = build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256, init_seed=0)
    return save_hf_model(model, tokenizer, tmp_path_factory.mktemp("tiny") / "hf_model")


def test_loading_seeds_the_new_head_and_fills_a_missing_pad_id(tmp_path, tiny_reward_dir):
    first, tokenizer = load_reward_model(tiny_reward_dir, init_seed=0)
    again, _ = load_reward_model(tiny_reward_dir, init_seed=0)
    other, _ = load_reward_model(tiny_reward_dir, init_seed=1)
    assert torch.equal(first.score.weight, again.score.weight)
    assert not torch.equal(first.score.weight, other.score.weight)

    first.config.pad_token_id = None
    save_hf_model(first, tokenizer, tmp_path / "no_pad")
    reloaded, reloaded_tokenizer = load_reward_model(tmp_path / "no_pad")
    assert reloaded_tokenizer.pad_token_id is not None
    assert reloaded.config.pad_token_id == reloaded_tokenizer.pad_token_id


def test_reward_input_ids_appends_eos_once(tiny_reward_dir):
    _, tokenizer = load_reward_model(tiny_reward_dir)
    ids = reward_input_ids(tokenizer, "User: hi\nAssistant:", " hello")
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert reward_input_ids(tokenizer, "User: hi\nAssistant:", " hello" + tokenizer.eos_token) == ids


def test_scores_match_what_the_reward_trainer_computes(tmp_path, demo_data_dir, tiny_reward_dir):
    """Same token ids as TRL's dataset; same rewards and metrics as a forward pass on TRL's collated batch."""
    cfg = reduced_config(tmp_path, demo_data_dir, "reward.batch_size=4")
    model, tokenizer = load_reward_model(tiny_reward_dir, init_seed=0)
    train_file = demo_data_dir / "preferences_train.jsonl"
    trainer = _setup_trainer(cfg, model, tokenizer, train_file, tmp_path / "checkpoints")

    rows = read_rows(train_file).head(8)
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    prompts = [format_prompt(p) for p in rows["prompt"]]
    chosen, rejected = list(rows["chosen"]), list(rows["rejected"])

    # 1. Token ids: ours == the trainer's tokenized dataset (same concatenation, EOS, special tokens).
    for i in range(len(rows)):
        trl_example = trainer.train_dataset[i]
        assert reward_input_ids(tokenizer, prompts[i], chosen[i]) == trl_example["chosen_ids"]
        assert reward_input_ids(tokenizer, prompts[i], rejected[i]) == trl_example["rejected_ids"]

    # 2. Rewards: TRL's collator right-pads chosen then rejected in one batch; compute_loss chunks the logits.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trainer.model.eval()
    with torch.no_grad():
        trl_chosen, trl_rejected = torch.chunk(trainer.model(**batch).logits.squeeze(-1), chunks=2)
        trainer.compute_loss(trainer.model, dict(batch))  # records TRL's accuracy and margin for this batch
    tokenizer.padding_side = "left"  # must not matter: scoring always right-pads, as training does
    # Other batch boundaries than TRL's, so rows are padded differently.
    ours_chosen = reward_scores(trainer.model, tokenizer, prompts, chosen, batch_size=3)
    ours_rejected = reward_scores(trainer.model, tokenizer, prompts, rejected, batch_size=5)
    assert ours_chosen.shape == (8,)
    assert len(set(ours_chosen.tolist())) > 1  # distinct scores: agreement is not trivial
    torch.testing.assert_close(ours_chosen, trl_chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_rejected, trl_rejected, atol=1e-5, rtol=1e-5)

    # 3. Metrics: ours on our scores == what the trainer logs as eval accuracy and margin on its batch.
    accuracy, margin = preference_metrics(ours_chosen, ours_rejected)
    assert accuracy == pytest.approx(trainer._metrics["eval"]["accuracy"][-1])
    assert margin == pytest.approx(trainer._metrics["eval"]["margin"][-1], abs=1e-5)


# --- the stage on the tiny model --------------------------------------------------------------------

@dataclass
class Upstream:
    root: Path
    data: StageResult
    sft: StageResult


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, demo_data_dir):
    """Base model, validated data and a short SFT (2 epochs), shared by the stage tests in one store."""
    root = tmp_path_factory.mktemp("reward_stage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", root / "mlartifacts")
        cfg = reduced_config(root, demo_data_dir)
        configure_tracking(cfg)
        data = run_validate(cfg, LINEAGE)
        base = run_base_model(cfg, LINEAGE, data=data)
        sft = run_sft(cfg, LINEAGE, base=base, data=data)
        yield Upstream(root, data, sft)
        while mlflow.active_run():
            mlflow.end_run()


def _train_reward(upstream: Upstream, demo_data_dir, *overrides: str):
    cfg = reduced_config(upstream.root, demo_data_dir, *overrides)
    configure_tracking(cfg)
    result = run_reward(cfg, LINEAGE, sft=upstream.sft, data=upstream.data)
    # The model the stage started from: the SFT weights with the score head its seed initialises.
    sft_dir = resolve_model_source(upstream.sft.model_uri, upstream.root / "sft_download")
    initial, _ = load_reward_model(sft_dir, init_seed=cfg.reward.seed)
    before = {name: tensor.detach().clone() for name, tensor in initial.state_dict().items()}
    # As every stage loads it: the saved model, or its adapters merged over the SFT model.
    after = merged_weights(result.model_uri, upstream.root / f"reward_{result.cache_key[:8]}", reward=True)
    return cfg, result, before, after


def test_full_finetune_changes_every_parameter_registers_and_serves(upstream, demo_data_dir):
    cfg, result, before, after = _train_reward(
        upstream, demo_data_dir, "reward.max_steps=3", "reward.save_steps=100"
    )
    assert before.keys() == after.keys() and "score.weight" in after
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert result.metrics["reward/global_step"] == 3
    assert 0.0 <= result.metrics["reward/accuracy"] <= 1.0 and math.isfinite(result.metrics["reward/margin"])
    assert math.isfinite(result.metrics["reward/final_loss"])

    # The run carries the metrics; the registry has a new version with lineage and metric tags.
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["alignflow.stage"] == "reward"
    assert run.data.tags["alignflow.parent.sft"] == upstream.sft.model_uri
    assert run.data.metrics["reward/accuracy"] == pytest.approx(result.metrics["reward/accuracy"])
    name, version = cfg.registry.reward_name, result.outputs["registered_version"]
    registered = MlflowClient().get_model_version(name, version)
    assert registered.tags["alignflow.cache_key"] == result.cache_key
    assert registered.tags["alignflow.git_sha"] == "test"
    assert registered.tags["alignflow.source_run_id"] == result.run_id
    assert registered.tags["alignflow.reward/accuracy"] == f"{result.metrics['reward/accuracy']:.6g}"
    assert str(MlflowClient().get_model_version_by_alias(name, "newest").version) == version
    assert result.output_hashes == {"model": result.cache_key}

    # The logged pyfunc scores raw prompts, one float per row; on held-out pairs it gives the same metrics.
    pairs = read_rows(Path(upstream.data.outputs["preferences_eval"]))
    served = mlflow.pyfunc.load_model(result.model_uri)
    chosen = served.predict(pd.DataFrame({"prompt": pairs["prompt"], "response": pairs["chosen"]}))
    rejected = served.predict(pd.DataFrame({"prompt": pairs["prompt"], "response": pairs["rejected"]}))
    assert len(chosen) == len(pairs) and all(isinstance(score, float) for score in chosen)
    accuracy, margin = preference_metrics(torch.tensor(chosen), torch.tensor(rejected))
    assert accuracy == pytest.approx(result.metrics["reward/accuracy"])
    assert margin == pytest.approx(result.metrics["reward/margin"], abs=1e-4)


def test_lora_changes_only_the_adapted_projections_and_the_score_head(upstream, demo_data_dir):
    _, result, before, after = _train_reward(
        upstream, demo_data_dir, "reward.max_steps=3", "reward.save_steps=100",
        "reward.lora.enabled=true", "reward.learning_rate=0.05",
    )
    folder = Path(resolve_model_source(result.model_uri, upstream.root / "reward_lora"))
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["adapter_model.safetensors"]  # no model copy
    assert before.keys() == after.keys(), "adapters and peft's head copy merge into the plain architecture"
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "score.weight" in changed, "the new score head must be trained in full"
    adapted = changed - {"score.weight"}
    assert adapted, "the merged LoRA update must reach the saved weights"
    assert all(("q_proj" in name or "v_proj" in name) for name in adapted), adapted
    assert result.metrics["reward/global_step"] == 3


def test_demo_settings_separate_refusals_from_compliance_on_held_out_pairs(upstream, demo_data_dir):
    _, result, _, _ = _train_reward(upstream, demo_data_dir, *DEMO_REWARD)
    assert result.metrics["reward/accuracy"] >= 0.9, result.metrics
    assert result.metrics["reward/margin"] > 0, result.metrics


def test_key_follows_the_inputs_and_sections_it_reads(tmp_path, demo_data_dir):
    cfg = reduced_config(tmp_path, demo_data_dir)
    sft = StageResult(stage="sft", run_id="r", cache_key="s", output_hashes={"model": "sft-key"})
    data = StageResult(stage="validate", run_id="r", cache_key="v",
                       output_hashes={"preferences_train": "a", "preferences_eval": "b", "sft_train": "c"})
    key = reward_key(cfg, sft, data)

    def with_hash(name: str) -> StageResult:
        return data.model_copy(update={"output_hashes": {**data.output_hashes, name: "changed"}})

    assert reward_key(cfg, sft, with_hash("sft_train")) == key  # a file this stage does not read
    assert reward_key(cfg, sft, with_hash("preferences_train")) != key
    assert reward_key(cfg, sft, with_hash("preferences_eval")) != key
    assert reward_key(cfg, sft.model_copy(update={"output_hashes": {"model": "other"}}), data) != key
    assert reward_key(reduced_config(tmp_path, demo_data_dir, "reward.learning_rate=0.5"), sft, data) != key
    assert reward_key(reduced_config(tmp_path, demo_data_dir, "eval.max_new_tokens=5"), sft, data) == key
