"""The stages an RL stage (PPO, RLOO) starts from, on the reduced demo config."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from models.ppo import PPOHyperparams
from tasks.base_model import run_base_model
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.reward import run_reward
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
# PPO on a tiny model in a few steps: fast learning, a fixed small KL coefficient, 8-token answers.
TINY_PPO = PPOHyperparams(
    rollout_batch_size=16, mini_batch_size=8, ppo_epochs=4, learning_rate=1e-2, max_grad_norm=1.0, clip_range=0.2,
    clip_range_value=0.2, vf_coef=0.1, ent_coef=0.0, gamma=1.0, lam=0.95, whiten_advantages=True,
    target_approx_kl=None, kl_controller="fixed", init_kl_coef=0.01, kl_target=None, kl_horizon=10000,
    max_new_tokens=8, temperature=1.0, missing_eos_penalty=None, length_penalty=0.0, seed=0)


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


def stage_child_command(stage: str, tmp_path: Path, cfg: PipelineConfig, sft, data, reward,
                        preamble: str = "") -> list[str]:
    """A command running `run_<stage>` in a fresh process on these inputs (written under tmp_path), after
    `preamble` (code that patches the stage, say): a process a test can kill."""
    files = [tmp_path / name for name in ("cfg.yaml", "sft.json", "data.json", "reward.json")]
    files[0].write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    for path, result in zip(files[1:], (sft, data, reward), strict=True):
        path.write_text(result.model_dump_json())
    script = f"""
import sys, yaml
{preamble}
from tasks.core.config import parse_config
from tasks.core.lineage import Lineage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.{stage} import run_{stage}

cfg = parse_config(yaml.safe_load(open(sys.argv[1])))
configure_tracking(cfg)
sft, data, reward = (StageResult.model_validate_json(open(p).read()) for p in sys.argv[2:5])
run_{stage}(cfg, Lineage("test", "test", "untracked"), sft=sft, data=data, reward=reward)
"""
    return [sys.executable, "-c", script, *map(str, files)]
