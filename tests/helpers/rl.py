"""The stages an RL stage (PPO, RLOO) starts from, on the reduced demo config."""

from __future__ import annotations

from pathlib import Path

from tasks.base_model import run_base_model
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.reward import run_reward
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")


def rl_stages(tmp_path: Path, data_dir: Path, *overrides: str):
    """(config, validated data, SFT result, reward result) for a short tiny-model run."""
    cfg = reduced_config(tmp_path, data_dir, "sft.max_steps=30", "reward.max_steps=10", *overrides)
    configure_tracking(cfg)
    return (cfg, *train_sft_and_reward(cfg))


def train_sft_and_reward(cfg: PipelineConfig):
    """(validated data, SFT result, reward result) under `cfg`, tracking already configured."""
    data = run_validate(cfg, LINEAGE)
    base = run_base_model(cfg, LINEAGE, data=data)
    sft = run_sft(cfg, LINEAGE, base=base, data=data)
    return data, sft, run_reward(cfg, LINEAGE, sft=sft, data=data)
