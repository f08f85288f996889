"""Stage: RLHF with our own PPO (`models.ppo`): the SFT model plus a value head, rewarded by the reward model,
penalised per token by its KL to the frozen SFT reference.

Every iteration logs reward mean/std, KL, entropy, clip fraction, approximate KL, value loss, explained
variance and response length; every `ppo.sample_table_steps` a table of sample completions with their rewards.
Checkpoints (policy, value head, optimizer, RNG, step, KL controller) go through accelerate every
`ppo.save_steps`; a rerun resumes from the last complete one. The recipe is `tasks.recipes.ppo`, which
`safe_ppo` runs too.
"""

from __future__ import annotations

from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.rl_inputs import rl_input_hashes
from tasks.recipes.ppo import run_ppo_stage
from tasks.run.contract import StageResult, stage_key

STAGE = "ppo"
SECTIONS = ("ppo", "model", "validation")


def ppo_key(cfg: PipelineConfig, sft: StageResult, data: StageResult, reward: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, rl_input_hashes(sft, reward, data), code=__name__)


def run_ppo(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult,
            reward: StageResult) -> StageResult:
    return run_ppo_stage(STAGE, cfg, lineage, key=ppo_key(cfg, sft, data, reward), sections=SECTIONS, code=__name__,
                         input_hashes=rl_input_hashes(sft, reward, data), sft=sft, data=data, reward=reward)
