"""The GPU check (benchmarks/training_step_benchmark.py) at the tiny shape on this CPU: it times both steps in
both precisions with models/ alone (MLflow and Prefect cannot be imported) and counts model FLOPs by its rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.training_step_benchmark import table

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_step_benchmark.py"
# The worker runs with MLflow and Prefect made unimportable: the check must run where neither is installed.
WITHOUT_SERVICES = ("import runpy, sys; sys.modules.update(mlflow=None, prefect=None); "
                    "runpy.run_path({script!r}, run_name='__main__')")


def _worker_rows(precision: str, where: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", WITHOUT_SERVICES.format(script=str(SCRIPT)), "--one", "tiny",
                           precision, "--steps", "1"], check=False, capture_output=True, text=True, cwd=where)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_gpu_check_times_dpo_and_ppo_steps_in_both_precisions_at_a_tiny_shape(tmp_path):
    rows = _worker_rows("fp32", tmp_path) + _worker_rows("bf16", tmp_path)
    assert [(row["precision"], row["step"]) for row in rows] == [
        ("fp32", "dpo"), ("fp32", "ppo"), ("bf16", "dpo"), ("bf16", "ppo")]
    for row in rows:
        assert row["samples_per_second"] > 0 and row["share_of_peak"] > 0
    # The tiny shape: 2 layers of q, k, v, o (4 x 64 x 64) and gate, up, down (3 x 64 x 256) = 131,072 trunk
    # weights, a 512 x 64 head, the top layer's half of the trunk adapted. DPO: 16 rows of 48 + 64 tokens, the head
    # at 65 positions: forward 2 x 131,072 x 112 + 2 x 32,768 x 65, backward 2 x 65,536 x 112 + 2 x 32,768 x 65.
    expected = 16 * (2 * 131_072 * 112 + 2 * 32_768 * 65) + 16 * (2 * 65_536 * 112 + 2 * 32_768 * 65)
    dpo, ppo = rows[0], rows[1]
    assert dpo["model_tflops"] * 1e12 * dpo["seconds_per_step"] == pytest.approx(expected, rel=1e-9)
    assert ppo["rollout_share"] > 0 and ppo["update_share"] > 0 and ppo["rollout_share"] + ppo["update_share"] <= 1
    assert "| tiny | bf16 | ppo |" in table(rows)
