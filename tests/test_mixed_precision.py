"""Which precision a trainer-based stage trains in: its own `bf16`, or where that is None the launcher's and the
GPU's; a float32 stage under a bf16 launcher is refused, since transformers would train it in bf16 anyway."""

from __future__ import annotations

import pytest
import torch
from trl import DPOConfig

from tasks.core.errors import ConfigError
from tasks.core.training_sections import DPOSection
from tasks.training.trainer import computes_in_bf16, training_arguments

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the rules below are those of a machine without CUDA")


@pytest.mark.parametrize(("bf16", "launcher", "expected"), [
    (None, None, False), (None, "no", False), (None, "bf16", True), (True, None, True), (True, "bf16", True),
    (False, None, False), (False, "no", False)])
def test_the_stage_setting_or_else_the_launcher_decides(monkeypatch, bf16, launcher, expected):
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    assert computes_in_bf16(DPOSection(bf16=bf16)) is expected


def test_a_float32_stage_under_a_bf16_launcher_is_refused_naming_both(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"bf16: false.*'bf16'.*ACCELERATE_MIXED_PRECISION"):
        computes_in_bf16(DPOSection(bf16=False))


def test_bf16_on_a_cpu_makes_transformers_arguments_it_accepts(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    args = DPOConfig(**training_arguments(DPOSection(bf16=True), tmp_path))  # without use_cpu it raises
    assert args.bf16 and args.use_cpu
    plain = DPOConfig(**training_arguments(DPOSection(), tmp_path))
    assert not plain.bf16 and not plain.use_cpu
