"""Saving a model sharded with FSDP2 over two CPU processes (gloo): every process joins the gather, the main one
writes, and what it wrote loads back equal to the unsharded weights (tests/helpers/sharded_save_worker.py).

accelerate 1.15 starts FSDP only on GPUs (on CPU it falls back to DDP), so no stage runs sharded here: this
drives the stages' gather (`tasks.training.trainer.gathered_weights`) and their saves (`save_trained_model`, as
`train_and_save` calls it, and PPO's `_save_final`) on a model sharded by torch's own `fully_shard`, as
accelerate's FSDP2 plugin shards it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from models.loading import load_causal_lm
from models.manifest import check_model_folder
from tasks.core import paths

pytestmark = pytest.mark.slow


def _launch(out, variant: str) -> None:
    with socket.socket() as probe:  # a free rendezvous port (port 0 would leave the two processes apart)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "tests.helpers.sharded_save_worker", str(out), variant],
                          check=False, cwd=paths.PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert int((out / "sharded_parameters.txt").read_text()) > 0  # the model really was sharded


def test_a_sharded_full_model_is_gathered_and_saved_whole(tmp_path):
    _launch(tmp_path, "full")
    whole = load_file(str(tmp_path / "whole.safetensors"))
    loaded = load_causal_lm(tmp_path / "saved").state_dict()  # checks the manifest too
    assert loaded.keys() == whole.keys()
    assert all(torch.equal(loaded[name], whole[name]) for name in whole)


def test_sharded_lora_adapters_are_gathered_and_saved_as_adapters(tmp_path):
    _launch(tmp_path, "lora")
    check_model_folder(tmp_path / "saved")
    whole = load_file(str(tmp_path / "whole.safetensors"))
    saved = load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    adapters = {name.replace(".default.", "."): tensor for name, tensor in whole.items() if "lora_" in name}
    assert saved.keys() == adapters.keys() and len(saved) == 8  # A and B of q_proj and v_proj in two layers
    assert all(torch.equal(saved[name], adapters[name]) for name in saved)


def test_ppo_saves_its_sharded_policy_adapters_and_value_head_from_the_gathered_weights(tmp_path):
    _launch(tmp_path, "ppo")
    whole = load_file(str(tmp_path / "whole.safetensors"))
    saved = load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    adapters = {name.removeprefix("policy.").replace(".default.", "."): tensor for name, tensor in whole.items()
                if "lora_" in name}
    assert saved.keys() == adapters.keys() and all(torch.equal(saved[name], adapters[name]) for name in saved)
    head = load_file(str(tmp_path / "saved" / "value_head.safetensors"))
    assert head.keys() == {"linear.weight", "linear.bias"}
    assert all(torch.equal(head[name], whole[f"value_head.{name}"]) for name in head)
