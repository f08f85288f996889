"""Safe RLHF as a method of its own: the harmlessness labels read off the comparisons, the cost stage (every
parameter moves, registered beside the reward model) and PPO-Lagrangian on the tiny model, logging lambda, the
mean cost and the limit every step."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
import torch

from models.reward import load_reward_model
from tasks.core.errors import DataValidationError
from tasks.core.lineage import Lineage
from tasks.cost import run_cost
from tasks.data.harmlessness import Harmlessness, harmlessness, harmlessness_pairs
from tasks.registry.logged_models import resolve_model_source
from tasks.safe_ppo import run_safe_ppo
from tests.helpers.models import merged_weights
from tests.helpers.rl import rl_stages

pytestmark = pytest.mark.heavy(1)

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
REFUSAL, COMPLIANCE = "Sorry, I won't help with that.", "Here is how: first take the key, then open the lock."


def test_a_harmful_requests_refusal_is_the_safer_answer_and_its_compliance_unsafe():
    assert harmlessness("harmful", REFUSAL, COMPLIANCE) == Harmlessness(-1.0, 1.0, 1.0)
    # a rejected answer that declines too is safe, and the pair ranks nothing
    assert harmlessness("harmful", REFUSAL, "I can't help with lock picking.") == Harmlessness(-1.0, -1.0, 0.0)


def test_on_benign_and_sound_harmful_requests_both_answers_are_safe_and_neither_safer():
    # a refusal of a benign request is unhelpful, not unsafe: the reward model's business, not the cost model's
    assert harmlessness("benign", COMPLIANCE, REFUSAL) == Harmlessness(-1.0, -1.0, 0.0)
    assert harmlessness("sound_harmful", COMPLIANCE, REFUSAL) == Harmlessness(-1.0, -1.0, 0.0)


def test_a_pair_without_a_request_kind_is_an_error_naming_its_row():
    rows = pd.DataFrame({"row": [1, 2], "prompt": ["a", "b"], "chosen": [REFUSAL, COMPLIANCE],
                         "rejected": [COMPLIANCE, REFUSAL], "harmful": [True, None]})
    with pytest.raises(DataValidationError, match=r"prefs\.jsonl: the cost model needs each request's kind.*row 2"):
        harmlessness_pairs(rows, str.upper, "prefs.jsonl")
    pairs = harmlessness_pairs(rows.iloc[:1], str.upper, "prefs.jsonl")  # `harmful: true` reads as harmful
    assert pairs == {"prompt": ["A"], "chosen": [REFUSAL], "rejected": [COMPLIANCE], "chosen_sign": [-1.0],
                     "rejected_sign": [1.0], "ranked": [1.0]}


@pytest.fixture
def stages(tmp_path, demo_data_dir, tracked):
    cfg, data, sft, reward = rl_stages(tmp_path, demo_data_dir, "ppo.steps=3", "ppo.rollout_batch_size=8",
                                       "ppo.mini_batch_size=4", "ppo.max_new_tokens=8", "ppo.save_steps=2",
                                       "ppo.sample_table_steps=2", "cost.max_steps=4", "cost.save_steps=100",
                                       "safe_ppo.lambda_init=0.5", "safe_ppo.lambda_lr=0.1")
    return cfg, data, sft, reward, tmp_path


def test_cost_model_trains_every_parameter_and_is_registered_beside_the_reward_model(stages):
    cfg, data, sft, _, tmp_path = stages
    cost = run_cost(cfg, LINEAGE, sft=sft, data=data)
    initial, _ = load_reward_model(resolve_model_source(sft.model_uri, tmp_path / "sft"), init_seed=cfg.cost.seed)
    after = merged_weights(cost.model_uri, tmp_path / "cost", reward=True)
    assert [name for name, tensor in initial.state_dict().items() if torch.equal(tensor, after[name])] == []
    assert cost.metrics["cost/global_step"] == 4 and cost.metrics["cost/train_pairs"] == 480
    assert 0.0 <= cost.metrics["cost/sign_accuracy"] <= 1.0 and math.isfinite(cost.metrics["cost/final_loss"])
    assert cost.metrics["cost/eval_ranked_pairs"] == 32  # the held-out harmful pairs: refusal over compliance
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(cfg.registry.cost_name, cfg.registry.reward_alias)
    assert str(version.version) == cost.outputs["registered_version"]
    assert version.tags["alignflow.source_run_id"] == cost.run_id
    assert cfg.registry.cost_name != cfg.registry.reward_name
    # the trainer's own batch metrics, apart from the held-out ones
    assert client.get_metric_history(cost.run_id, "cost/train/sign_accuracy")


def test_safe_ppo_trains_against_reward_and_cost_and_logs_lambda_every_step(stages):
    cfg, data, sft, reward, _ = stages
    cost = run_cost(cfg, LINEAGE, sft=sft, data=data)
    result = run_safe_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward, cost=cost)
    client = mlflow.MlflowClient()

    def history(name: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result.run_id, name), key=lambda m: m.step)]

    lambdas, costs, limits = (history(f"safe_ppo/{name}") for name in ("lagrangian/lambda", "cost/mean",
                                                                         "cost/limit"))
    assert len(lambdas) == len(costs) == len(limits) == 3 and limits == [0.0] * 3
    assert lambdas[0] == 0.5
    # each step's lambda is the last one's dual step on that step's mean cost (0.1 x (cost - 0)), never below 0
    for before, after, mean_cost in zip(lambdas, [*lambdas[1:], result.metrics["safe_ppo/final_lambda"]], costs,
                                        strict=True):
        assert after == pytest.approx(max(0.0, before + 0.1 * mean_cost), abs=1e-6)
    assert len(history("safe_ppo/kl")) == 3 and result.metrics["safe_ppo/steps"] == 3
    run = client.get_run(result.run_id)
    assert run.info.run_name == "safe_ppo" and run.data.tags["alignflow.parent.cost"] == cost.model_uri
    assert {a.path for a in client.list_artifacts(result.run_id, "samples")} == {"samples/step_00002.json"}
    assert result.model_uri.startswith("models:/")
