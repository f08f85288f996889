"""Kill -9 the SFT stage mid-training, rerun it, and check it resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml

from models.checkpoints import is_complete
from tasks.base_model import run_base_model
from tasks.core.lineage import Lineage
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft, sft_key
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
    base = run_base_model(cfg, LINEAGE)
    data = run_validate(cfg, LINEAGE, base=base)

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
