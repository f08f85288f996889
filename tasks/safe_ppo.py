"""Stage: PPO-Lagrangian, Safe RLHF's method (Dai et al. 2023, "Safe RLHF: Safe Reinforcement Learning from Human
Feedback"; github.com/PKU-Alignment/safe-rlhf): PPO with every `ppo` setting, maximising the reward model's score
less lambda times the cost model's cost, with lambda >= 0 learnt against `safe_ppo.cost_limit`
(`models.lagrangian`). The same recipe as `ppo` (`tasks.recipes.ppo`), so the two differ by the constraint
alone; it logs `safe_ppo/lagrangian/lambda`, `safe_ppo/cost/mean` and `safe_ppo/cost/limit` every step.
"""

from __future__ import annotations

from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.rl_inputs import rl_input_hashes
from tasks.recipes.ppo import run_ppo_stage
from tasks.run.contract import StageResult, stage_key

STAGE = "safe_ppo"
SECTIONS = ("ppo", "safe_ppo", "model", "validation")


def _input_hashes(sft: StageResult, data: StageResult, reward: StageResult, cost: StageResult) -> dict[str, str]:
    return {**rl_input_hashes(sft, reward, data), "cost": cost.output_hashes["model"]}


def safe_ppo_key(cfg: PipelineConfig, sft: StageResult, data: StageResult, reward: StageResult,
                 cost: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(sft, data, reward, cost), code=__name__)


def run_safe_ppo(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult, reward: StageResult,
                 cost: StageResult) -> StageResult:
    return run_ppo_stage(STAGE, cfg, lineage, key=safe_ppo_key(cfg, sft, data, reward, cost), sections=SECTIONS,
                         code=__name__, input_hashes=_input_hashes(sft, data, reward, cost), sft=sft, data=data,
                         reward=reward, cost=cost, lagrangian=cfg.safe_ppo)
