"""Kill -9 the SFT stage mid-training, rerun it, and check it resumes from the last complete checkpoint; and a
resume loads the checkpoint's weights exactly, warning only about keys that are really missing."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from models.checkpoints import is_complete
from models.tiny import build_tiny_llama, train_tokenizer
from tasks import sft
from tasks.base_model import run_base_model
from tasks.core.lineage import Lineage
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft, sft_key
from tasks.training.trainer import _tied_output_keys, _TiedWeightsAreNotMissing, _train_resuming
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

MAX_STEPS, SAVE_STEPS, KILL_AFTER = 40, 5, 10
LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")

# Run in a child process: the same stage, slowed down so the parent can kill it between checkpoints.
CHILD = """
import sys, time, yaml
from transformers import TrainerCallback
import tasks.sft as sft
from tasks.core.config import parse_config
from tasks.core.lineage import Lineage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.15)

make_callbacks = sft.callbacks
sft.callbacks = lambda prefix: make_callbacks(prefix) + [Slow()]
cfg = parse_config(yaml.safe_load(open(sys.argv[1])))
configure_tracking(cfg)
base, data = (StageResult.model_validate_json(open(p).read()) for p in sys.argv[2:4])
sft.run_sft(cfg, Lineage("test", "test", "untracked"), base=base, data=data)
"""


def _wait_for(path: Path, timeout: float, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not is_complete(path):
        assert child.poll() is None, f"child exited early: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} never completed"
        time.sleep(0.1)


def test_sft_resumes_after_kill_and_matches_an_uninterrupted_run(tmp_path, demo_data_dir, tracked):
    overrides = [f"sft.max_steps={MAX_STEPS}", f"sft.save_steps={SAVE_STEPS}", "sft.logging_steps=5"]
    cfg = reduced_config(tmp_path, demo_data_dir, *overrides)
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    base = run_base_model(cfg, LINEAGE, data=data)

    files = {"cfg": tmp_path / "cfg.yaml", "base": tmp_path / "base.json", "data": tmp_path / "data.json"}
    files["cfg"].write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    files["base"].write_text(base.model_dump_json())
    files["data"].write_text(data.model_dump_json())
    checkpoints = cfg.work_dir / "sft" / sft_key(cfg, base, data)[:16] / "checkpoints"

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, files.values())], env=env,
                             stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        _wait_for(checkpoints / f"checkpoint-{KILL_AFTER}", timeout=300, child=child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # A checkpoint whose write was cut short: newer than any complete one, and without the marker.
    torn = checkpoints / "checkpoint-35"
    torn.mkdir(exist_ok=True)
    (torn / "model.safetensors").write_bytes(b"half a tensor")

    resumed = run_sft(cfg, LINEAGE, base=base, data=data)

    resumed_tags = mlflow.get_run(resumed.run_id).data.tags
    resumed_from = int(resumed_tags["alignflow.resumed_from_step"])
    assert KILL_AFTER <= resumed_from < MAX_STEPS and resumed_from % SAVE_STEPS == 0
    assert resumed_from != 35, "the torn checkpoint must never be loaded"
    assert resumed.metrics["sft/global_step"] == MAX_STEPS
    # The resumed run only logged the steps after its checkpoint.
    resumed_steps = [m.step for m in mlflow.MlflowClient().get_metric_history(resumed.run_id, "sft/loss")]
    assert min(resumed_steps) > resumed_from

    fresh_cfg = cfg.model_copy(update={"work_dir": tmp_path / "fresh"})
    fresh = run_sft(fresh_cfg, LINEAGE, base=base, data=data)
    assert "alignflow.resumed_from_step" not in mlflow.get_run(fresh.run_id).data.tags
    history = {run: {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run, "sft/loss")}
               for run in (resumed.run_id, fresh.run_id)}
    tail = sorted(history[resumed.run_id])
    for step in tail:
        assert abs(history[resumed.run_id][step] - history[fresh.run_id][step]) < 1e-3, json.dumps(history)


MISSING_KEYS = "There were missing keys in the checkpoint model loaded"


@pytest.fixture
def transformers_logs(caplog):
    """caplog, seeing the transformers loggers (they do not propagate to the root logger outside CI)."""
    library = logging.getLogger("transformers")
    propagate, library.propagate = library.propagate, True
    caplog.set_level(logging.WARNING)
    yield caplog
    library.propagate = propagate


class _WeightsAtStart(TrainerCallback):
    """The model's weights when training begins: after the Trainer has loaded the checkpoint to resume from."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _train_tiny_sft(cfg, demo_data_dir, checkpoints: Path, init_seed: int) -> dict[str, torch.Tensor]:
    """Train the tiny model with the SFT trainer, resuming from `checkpoints`; the weights it started from."""
    tiny = cfg.model.tiny
    texts = (demo_data_dir / "sft_train.jsonl").read_text().splitlines()
    tokenizer = train_tokenizer(texts, tiny.vocab_size, tiny.max_position_embeddings)
    model = build_tiny_llama(tokenizer, hidden_size=tiny.hidden_size, num_hidden_layers=tiny.num_hidden_layers,
                             num_attention_heads=tiny.num_attention_heads, intermediate_size=tiny.intermediate_size,
                             max_position_embeddings=tiny.max_position_embeddings, init_seed=init_seed)
    trainer = sft._setup_trainer(cfg, model, tokenizer, demo_data_dir / "sft_train.jsonl", checkpoints)
    start = _WeightsAtStart()
    trainer.add_callback(start)
    with mlflow.start_run():
        _train_resuming(trainer, checkpoints)
    return start.weights


def test_a_resumed_model_has_the_checkpoint_weights_and_no_tied_weight_warning(tmp_path, demo_data_dir, tracked,
                                                                                transformers_logs):
    def steps(n: int):
        return reduced_config(tmp_path, demo_data_dir, f"sft.max_steps={n}", "sft.save_steps=2")

    configure_tracking(steps(2))
    checkpoints = tmp_path / "checkpoints"
    _train_tiny_sft(steps(2), demo_data_dir, checkpoints, init_seed=0)
    saved = load_file(checkpoints / "checkpoint-2" / "model.safetensors")
    assert "lm_head.weight" not in saved  # tied to the input embeddings, so stored once
    transformers_logs.clear()

    # Another initialisation, so only loading the checkpoint can give its weights.
    resumed = _train_tiny_sft(steps(4), demo_data_dir, checkpoints, init_seed=1)

    assert MISSING_KEYS not in transformers_logs.text
    assert set(resumed) == {*saved, "lm_head.weight"}
    for name, tensor in saved.items():
        assert torch.equal(resumed[name], tensor), name
    assert torch.equal(resumed["lm_head.weight"], saved["model.embed_tokens.weight"])

    # A key that is really missing is still reported.
    newest = checkpoints / "checkpoint-4" / "model.safetensors"
    weights = load_file(newest)
    del weights["model.norm.weight"]
    save_file(weights, newest, metadata={"format": "pt"})
    _train_tiny_sft(steps(6), demo_data_dir, checkpoints, init_seed=1)
    (warning,) = [record.getMessage() for record in transformers_logs.records if MISSING_KEYS in record.getMessage()]
    assert "'model.norm.weight'" in warning


@pytest.mark.parametrize("tie", [True, False])
def test_only_a_tied_lm_head_is_kept_quiet(tie):
    config = LlamaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, tie_word_embeddings=tie)
    quiet = _TiedWeightsAreNotMissing(_tied_output_keys(LlamaForCausalLM(config)))

    def shown(missing: list[str]) -> bool:
        record = logging.LogRecord("transformers.trainer", logging.WARNING, "trainer.py", 1,
                                   f"{MISSING_KEYS}: {missing}.", None, None)
        return quiet.filter(record)

    assert shown(["lm_head.weight"]) is not tie  # an untied lm_head missing is a real loss
    assert shown(["model.norm.weight"])
    assert shown(["lm_head.weight", "model.norm.weight"])
