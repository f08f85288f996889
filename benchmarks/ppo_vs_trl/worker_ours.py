"""Worker `ours`: times each `PPOTrainer.step()` of our PPO (`models.ppo`) on the workload, in the project venv.
Run by the harness as `benchmarks/ppo_vs_trl.py --worker ours` in a fresh process; `run` returns the JSON."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from .workload import (
    BATCH,
    LEARNING_RATE,
    MINI_BATCH,
    NEW_TOKENS,
    PPO_EPOCHS,
    PROMPTS,
    REPO,
    build_models,
    matmul_params,
    matmul_rate,
    peak_rss_mib,
    run_fields,
    summarise_steps,
    worker_preamble,
)


def run(args) -> dict:
    torch = worker_preamble()
    sys.path.insert(0, str(REPO))
    from models import ppo
    from models.reward import reward_scores
    from models.value_head import PolicyWithValueHead

    tokenizer, policy, reference, reward_model = build_models(args.size)
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    reward_model.eval().requires_grad_(False)

    timings: dict[str, list[float]] = {"sampling": [], "reward": []}
    widths: dict[str, int] = {}
    bf16_generate = args.bf16 in ("generate", "both")
    bf16_train = args.bf16 in ("train", "both")

    def autocast(enabled: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()

    original_generate = PolicyWithValueHead.generate

    def timed_generate(self, *a, **kw):
        started = time.perf_counter()
        with autocast(bf16_generate):
            sequences = original_generate(self, *a, **kw)
        timings["sampling"].append(time.perf_counter() - started)
        widths["prompt"] = kw["input_ids"].shape[1]
        widths["response"] = sequences.shape[1] - widths["prompt"]
        return sequences

    PolicyWithValueHead.generate = timed_generate
    original_minibatch = ppo.PPOTrainer._minibatch_step

    def minibatch_step(self, rollout, indices):
        with autocast(bf16_train):
            return original_minibatch(self, rollout, indices)

    ppo.PPOTrainer._minibatch_step = minibatch_step

    def reward_fn(prompts, responses):
        started = time.perf_counter()
        scores = reward_scores(reward_model, tokenizer, prompts, responses, batch_size=BATCH)
        timings["reward"].append(time.perf_counter() - started)
        return scores

    hp = ppo.PPOHyperparams(
        rollout_batch_size=BATCH,
        mini_batch_size=MINI_BATCH,
        ppo_epochs=PPO_EPOCHS,
        learning_rate=LEARNING_RATE,
        max_grad_norm=1.0,
        clip_range=0.2,
        clip_range_value=0.2,
        vf_coef=0.1,
        ent_coef=0.0,
        gamma=1.0,
        lam=0.95,
        whiten_advantages=True,
        target_approx_kl=None,
        kl_controller="fixed",
        init_kl_coef=0.05,
        kl_target=None,
        kl_horizon=10000,
        max_new_tokens=NEW_TOKENS,
        temperature=1.0,
        missing_eos_penalty=None,
        length_penalty=0.0,
        seed=0,
    )
    trainer = ppo.PPOTrainer(PolicyWithValueHead(policy), tokenizer, reward_fn, hp, reference=reference)
    rss_setup = peak_rss_mib()
    fp32_rate = matmul_rate("float32")
    bf16_rate = matmul_rate("bfloat16", 512, 2) if args.bf16 != "none" else None

    load_before = os.getloadavg()
    walls, cpus, rollouts, updates, samplings, rewards = [], [], [], [], [], []
    for step in range(args.warmup + args.steps):
        timings["sampling"].clear()
        timings["reward"].clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        metrics, _ = trainer.step(list(PROMPTS))
        wall = time.perf_counter() - started
        if step >= args.warmup:
            walls.append(wall)
            cpus.append(time.process_time() - cpu_started)
            rollouts.append(metrics["rollout_seconds"])
            updates.append(metrics["update_seconds"])
            samplings.append(sum(timings["sampling"]))
            rewards.append(sum(timings["reward"]))
    load_after = os.getloadavg()

    n_policy, n_reward = matmul_params(policy), matmul_params(reward_model)
    seq = widths["prompt"] + widths["response"]
    tokens = BATCH * seq
    flops = (
        2 * n_policy * BATCH * (seq - 1)  # generation: prompt prefill + 15 cached steps
        + 2 * n_policy * tokens * 2  # policy/value and reference forwards
        + 2 * n_reward * BATCH * (seq + 1)  # reward model (re-tokenized text + EOS)
        + 6 * n_policy * tokens * PPO_EPOCHS
    )  # PPO epochs, forward + backward
    result = summarise_steps(
        walls,
        {
            "sampling": samplings,
            "scoring": [r - s for r, s in zip(rollouts, samplings)],
            "update": updates,
            "rollout": rollouts,
        },
        flops,
    )
    result.update(run_fields(args.size, widths, rss_setup, (load_before, load_after)))
    result.update(
        {
            "side": "ours",
            "step_cpu_seconds": [round(c, 3) for c in cpus],
            "bf16": args.bf16,
            "params": {
                "policy": sum(p.numel() for p in policy.parameters()),
                "policy_matmul": n_policy,
                "reward_matmul": n_reward,
                "value_head": sum(p.numel() for p in trainer.model.value_head.parameters()),
            },
            "models": "policy+value head (one trunk, trained), reference copy, reward model",
            "optimizer": type(
                trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
            ).__name__,
            "matmul_fp32_flops": fp32_rate,
            "matmul_bf16_flops": bf16_rate,
        }
    )
    return result
