"""Our PPO on tiny models: it raises a reward, resumes after kill -9, and rejects bad input clearly."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from models.checkpoints import is_complete
from models.ppo import PPOTrainer, penalized_scores, sample_prompts
from models.sequence_logprobs import position_ids_for, response_logprobs_and_values, response_mask
from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import PolicyWithValueHead
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.data.readers import read_rows
from tasks.data.rl_inputs import check_same_tokenizer
from tasks.ppo import ppo_key, run_ppo
from tasks.recipes.ppo import setup_ppo_trainer
from tasks.registry.logged_models import resolve_model_source
from tests.helpers.models import merged_weights
from tests.helpers.rl import TINY_PPO, rl_stages, stage_child_command

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
HP = TINY_PPO


def test_response_mask_stops_after_the_first_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9]])
    # row 0: tokens up to and including the first EOS (index 2); row 1: up to index 1; row 2: no EOS, all kept
    assert response_mask(ids, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_prompt_sampling_is_a_function_of_seed_and_step():
    prompts = [f"p{i}" for i in range(10)]
    assert sample_prompts(prompts, 4, seed=0, step=3) == sample_prompts(prompts, 4, seed=0, step=3)
    assert sample_prompts(prompts, 4, seed=0, step=3) != sample_prompts(prompts, 4, seed=0, step=4)
    with pytest.raises(ValueError, match="at least one training prompt"):
        sample_prompts([], 4, seed=0, step=0)


def test_prompt_sampling_repeats_each_prompt_in_a_row_for_a_per_prompt_baseline():
    prompts = [f"p{i}" for i in range(10)]
    batch = sample_prompts(prompts, 8, seed=0, step=3, samples_per_prompt=4)
    assert batch[:4] == [batch[0]] * 4 and batch[4:] == [batch[4]] * 4
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be a multiple of samples_per_prompt \(4\)"):
        sample_prompts(prompts, 6, seed=0, step=0, samples_per_prompt=4)


def test_a_per_prompt_baseline_leaves_only_the_kl_penalty_when_every_answer_scores_alike():
    """Four answers to each prompt, all scored 5: against their siblings they earn nothing, so each row's rewards
    sum to its KL penalty alone; without the baseline each row also carries the 5. The logged scores stay raw."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["User: say something\nAssistant: yes no maybe yes"] * 50, 300, 64)

    def tiny():
        return build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, init_seed=0)

    prompts = ["User: say something\nAssistant:"] * 4 + ["User: say more\nAssistant:"] * 4
    for group, score_in_rewards in ((4, 0.0), (1, 5.0)):
        hp = dataclasses.replace(HP, rollout_batch_size=8, samples_per_prompt=group)
        trainer = PPOTrainer(PolicyWithValueHead(tiny()), tokenizer, lambda p, r: torch.full((len(r),), 5.0), hp,
                             reference=tiny())
        rollout = trainer.rollout(prompts)
        penalty = -HP.init_kl_coef * rollout.kl.sum(dim=1)  # (B,)
        assert torch.allclose(rollout.rewards.sum(dim=1), penalty + score_in_rewards, atol=1e-5), group
        assert torch.equal(rollout.scores, torch.full((8,), 5.0))


def test_response_logprobs_need_the_lm_head_only_at_response_positions():
    """The LM head runs only where a response token is predicted; the log-probs and values must equal those taken
    from every position's logits, left padding included."""
    tokenizer = train_tokenizer(["User: say something\nAssistant: yes no maybe yes"] * 50, 300, 64)
    policy = PolicyWithValueHead(build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=64,
                                                  max_position_embeddings=64, init_seed=0))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, len(tokenizer), (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # a left-padded prompt
    prompt_length, temperature = 5, 0.7
    logprobs, values, logits = response_logprobs_and_values(policy, input_ids, attention_mask, prompt_length,
                                                            temperature=temperature)
    with torch.no_grad():
        full_logits, full_values = policy(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids_for(attention_mask))
    expected_logits = full_logits[:, prompt_length - 1 : -1] / temperature
    expected = torch.log_softmax(expected_logits, -1).gather(-1, input_ids[:, prompt_length:, None]).squeeze(-1)
    assert logits.shape == (3, 4, len(tokenizer))
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logprobs, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, full_values[:, prompt_length - 1 : -1], rtol=1e-5, atol=1e-5)


def test_ppo_raises_the_mean_reward_of_a_tiny_model():
    """Reward: the share of response tokens from the lower half of the vocabulary (about 0.5 for a random model).
    PPO must learn to prefer those tokens."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["User: say something\nAssistant: yes no maybe yes"] * 50, 300, 64)
    half = len(tokenizer) // 2
    policy = build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64, init_seed=0)
    reference = build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64, init_seed=0)

    def share_of_lower_half(prompts, responses):
        ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
        return torch.tensor([sum(t < half for t in row) / max(len(row), 1) for row in ids])

    trainer = PPOTrainer(PolicyWithValueHead(policy), tokenizer, share_of_lower_half, HP, reference=reference)
    rewards = [trainer.step(["User: say something\nAssistant:"] * HP.rollout_batch_size)[0]["reward_mean"]
               for _ in range(20)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.1, rewards


def test_a_separate_critics_gradient_is_clipped_on_its_own():
    """A value loss weighted 1e4 gives the critic a gradient far above max_grad_norm: what the optimizer steps
    with is clipped to it, apart from the policy's."""
    from models.value_head import SeparateCritic, ValueHead

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["User: say something\nAssistant: yes no maybe yes"] * 50, 300, 64)
    shape = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}
    policy, reference, critic_model = (build_tiny_llama(tokenizer, **shape, init_seed=seed) for seed in (0, 0, 1))
    critic = SeparateCritic(critic_model.model, ValueHead(32, init_seed=0))
    hp = dataclasses.replace(HP, vf_coef=1e4, ppo_epochs=1, max_grad_norm=1.0)
    trainer = PPOTrainer(PolicyWithValueHead(policy), tokenizer, lambda p, r: torch.full((len(r),), 50.0), hp,
                         reference=reference, critic=critic)
    norms = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad.norm() for p in trainer._critic().parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(grads)).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.step(["User: say something\nAssistant:"] * hp.rollout_batch_size)
    assert norms and max(norms) <= 1.0 + 1e-4, norms


@pytest.fixture
def stages(tmp_path, demo_data_dir, tracked):
    def build(*overrides):
        return rl_stages(tmp_path, demo_data_dir, "ppo.steps=4", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4",
                         "ppo.max_new_tokens=8", "ppo.save_steps=2", "ppo.sample_table_steps=2", *overrides)
    return build


def test_ppo_stage_logs_every_metric_and_sample_tables(stages):
    cfg, data, sft, reward = stages()
    result = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    client = mlflow.MlflowClient()
    for name in ("reward_mean", "reward_std", "kl", "entropy", "clip_fraction", "approx_kl", "value_loss",
                 "explained_variance", "response_length"):
        assert len(client.get_metric_history(result.run_id, f"ppo/{name}")) == 4, name
    tables = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert tables == {"samples/step_00002.json", "samples/step_00004.json"}
    assert result.metrics["ppo/steps"] == 4
    # The KL budget reads the probe's KL at temperature 1, on probe steps: zero before the first update.
    kl = [m.value for m in sorted(client.get_metric_history(result.run_id, "monitor/kl"), key=lambda m: m.step)]
    assert len(kl) == len(range(0, 4, cfg.ppo.monitors.probe_steps)) and abs(kl[0]) < 1e-4
    assert result.model_uri.startswith("models:/")


def test_ppo_rewards_the_weighted_sum_of_its_terms_and_logs_each(stages):
    functions = "[{name: model, weight: 1.0}, {name: refuses_harmful, weight: 2.0}, {name: helps_benign, weight: 0.5}]"
    cfg, data, sft, reward = stages("ppo.steps=2", f"ppo.reward_functions={functions}")
    result = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    client = mlflow.MlflowClient()

    def history(name: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result.run_id, name), key=lambda m: m.step)]

    model, refuses, helps = (history(f"ppo/reward/{name}") for name in ("model", "refuses_harmful", "helps_benign"))
    assert len(model) == len(refuses) == len(helps) == 2
    assert all(-1.0 <= value <= 1.0 for value in refuses + helps)
    for total, *terms in zip(history("ppo/reward_mean"), model, refuses, helps, strict=True):
        assert total == pytest.approx(terms[0] + 2.0 * terms[1] + 0.5 * terms[2], abs=1e-5)


def test_ppo_with_lora_keeps_no_reference_copy_and_stores_adapters(stages, tmp_path):
    cfg, data, sft, reward = stages("ppo.lora.enabled=true", "ppo.steps=2")
    result = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    # The reference is the policy with its adapters disabled: the probe's KL before the first update is zero.
    first_kl = min(mlflow.MlflowClient().get_metric_history(result.run_id, "monitor/kl"), key=lambda m: m.step)
    assert abs(first_kl.value) < 1e-4
    folder = Path(resolve_model_source(result.model_uri, tmp_path / "ppo"))
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert (folder / "value_head.safetensors").is_file()
    merged = merged_weights(result.model_uri, tmp_path / "merged")
    assert not any("lora" in name for name in merged)
    assert merged.keys() == merged_weights(sft.model_uri, tmp_path / "sft").keys()


def test_ppo_with_the_reward_model_as_critic_trains_only_its_head(stages):
    cfg, data, sft, reward = stages("ppo.critic=reward_model", "ppo.steps=2")
    source = data.outputs["preferences_train"]
    trainer, _ = setup_ppo_trainer(cfg, sft, reward, cfg.work_dir / "critic-check", read_rows(Path(source)), source)
    trunk = {name: p.detach().clone() for name, p in trainer._critic().trunk.named_parameters()}
    head = trainer._critic().value_head.linear.weight.detach().clone()
    for _ in range(2):
        trainer.step(["User: how do I bake bread?\nAssistant:"] * cfg.ppo.rollout_batch_size)
    assert all(torch.equal(p, trunk[name]) for name, p in trainer._critic().trunk.named_parameters())
    assert not torch.equal(trainer._critic().value_head.linear.weight, head)


def test_empty_prompt_set_is_a_clear_error(stages, tmp_path):
    cfg, data, sft, reward = stages()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = data.model_copy(update={"outputs": {**data.outputs, "preferences_train": str(empty)},
                                   "output_hashes": {**data.output_hashes, "preferences_train": md5_file(empty)}})
    with pytest.raises(ValueError, match=r"PPO needs training prompts: .*empty\.jsonl"):
        run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)


def test_a_reward_model_with_another_tokenizer_is_rejected():
    ours = train_tokenizer(["User: hello\nAssistant: hi there"] * 20, 300, 64)
    theirs = train_tokenizer(["completely different text for another vocabulary"] * 20, 300, 64)
    with pytest.raises(ValueError,
                       match=r"reward model's tokenizer \(rm/, 299 tokens\) does not match the policy's \(sft/"):
        check_same_tokenizer(ours, theirs, "sft/", "rm/")
    check_same_tokenizer(ours, ours, "sft/", "sft/")


SLOW_STEPS = """
import time
import models.ppo as ppo
step = ppo.PPOTrainer.step
def slow_step(self, prompts):
    time.sleep(0.5)
    return step(self, prompts)
ppo.PPOTrainer.step = slow_step
"""


def test_ppo_resumes_after_kill_and_ends_like_an_uninterrupted_run(stages, tmp_path):
    cfg, data, sft, reward = stages("ppo.steps=6")
    command = stage_child_command("ppo", tmp_path, cfg, sft, data, reward, preamble=SLOW_STEPS)
    checkpoints = cfg.work_dir / "ppo" / ppo_key(cfg, sft, data, reward)[:16] / "checkpoints"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 300
        while not is_complete(checkpoints / "checkpoint-2"):
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    (checkpoints / "checkpoint-6.partial").mkdir(exist_ok=True)  # a write cut short: never loaded

    resumed = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    resumed_from = int(mlflow.get_run(resumed.run_id).data.tags["alignflow.resumed_from_step"])
    assert resumed_from in (2, 4)
    fresh = run_ppo(cfg.model_copy(update={"work_dir": tmp_path / "fresh"}), LINEAGE, sft=sft, data=data,
                    reward=reward)
    a = load_file(Path(resolve_model_source(resumed.model_uri, tmp_path / "a")) / "model.safetensors")
    b = load_file(Path(resolve_model_source(fresh.model_uri, tmp_path / "b")) / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert resumed.metrics["ppo/final_reward_mean"] == pytest.approx(fresh.metrics["ppo/final_reward_mean"], abs=1e-4)


def test_penalized_scores_by_hand():
    scores, lengths = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 4.0])
    has_eos = torch.tensor([True, False])
    # row 0: 1 - 0 - 0.1 * 10 = 0; row 1: 2 - 0.5 - 0.1 * 4 = 1.1
    assert penalized_scores(scores, lengths, has_eos, 0.5, 0.1).tolist() == pytest.approx([0.0, 1.1])
    assert penalized_scores(scores, lengths, has_eos, None, 0.0).tolist() == [1.0, 2.0]
