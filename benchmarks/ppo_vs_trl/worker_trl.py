"""Worker `trl`: times each update of TRL 1.12's `trl.experimental.ppo.PPOTrainer.train()` on the workload.
Run by the harness as `benchmarks/ppo_vs_trl.py --worker trl` in a fresh process of the anchor venv's python,
where this project is not installed: it imports only the standard library, `.workload` and the anchor's
packages. `run` returns the JSON."""

from __future__ import annotations

import os
import tempfile
import time

from .workload import (
    BATCH,
    LEARNING_RATE,
    MINI_BATCH,
    NEW_TOKENS,
    PPO_EPOCHS,
    PROMPTS,
    build_models,
    llama_config,
    matmul_params,
    matmul_rate,
    peak_rss_mib,
    run_fields,
    seeded,
    summarise_steps,
    worker_preamble,
)


def run(args) -> dict:
    worker_preamble()
    import numpy as np
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer, policy, reference, reward_model = build_models(args.size)
    tokenizer.padding_side = "left"
    value_model = seeded(2, lambda: LlamaForSequenceClassification(llama_config(args.size, tokenizer, 1)))
    steps = args.warmup + args.steps
    dataset = Dataset.from_dict(
        {"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]}
    )

    marks: dict[str, list[float]] = {"step_end": [], "cpu": [], "sampling": [], "update_start": []}
    widths: dict[str, int] = {}
    original_generation = trl_ppo.batch_generation

    def batch_generation(model, queries, *a, **kw):
        started = time.perf_counter()
        query_responses, logits = original_generation(model, queries, *a, **kw)
        marks["sampling"].append(time.perf_counter() - started)
        widths["prompt"], widths["response"] = queries.shape[1], query_responses.shape[1] - queries.shape[1]
        return query_responses, logits

    trl_ppo.batch_generation = batch_generation

    class _Random:  # np.random with the first permutation of each update marking the end of its rollout
        def __getattr__(self, name):
            return getattr(np.random, name)

        def permutation(self, n):
            if len(marks["update_start"]) < len(marks["sampling"]):
                marks["update_start"].append(time.perf_counter())
            return np.random.permutation(n)

    class _Numpy:
        random = _Random()

        def __getattr__(self, name):
            return getattr(np, name)

    trl_ppo.np = _Numpy()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())
            marks["cpu"].append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())
            marks["cpu"].append(time.process_time())

    with tempfile.TemporaryDirectory() as output_dir:
        config = PPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            num_mini_batches=BATCH // MINI_BATCH,
            num_ppo_epochs=PPO_EPOCHS,
            total_episodes=BATCH * steps,
            response_length=NEW_TOKENS,
            stop_token=None,
            stop_token_id=None,
            missing_eos_penalty=None,
            local_rollout_forward_batch_size=BATCH,
            num_sample_generations=0,
            temperature=1.0,
            learning_rate=LEARNING_RATE,
            kl_coef=0.05,
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            report_to=[],
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            seed=0,
            use_cpu=True,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            train_dataset=dataset,
            value_model=value_model,
            callbacks=[StepTimer()],
        )
        rss_setup = peak_rss_mib()
        fp32_rate = matmul_rate("float32")
        load_before = os.getloadavg()
        trainer.train()
        load_after = os.getloadavg()
        optimizer = (
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        )
        optimizer_name = f"{type(optimizer).__name__}({config.optim})"

    ends = marks["step_end"]
    if len(ends) != steps + 1:
        raise RuntimeError(f"expected {steps} TRL updates, timed {len(ends) - 1}")
    walls = [ends[i + 1] - ends[i] for i in range(args.warmup, steps)]
    rollouts = [marks["update_start"][i] - ends[i] for i in range(args.warmup, steps)]
    samplings = marks["sampling"][args.warmup : steps]
    n_policy, n_value, n_reward = (
        matmul_params(policy),
        matmul_params(value_model),
        matmul_params(reward_model),
    )
    seq = widths["prompt"] + widths["response"]
    tokens = BATCH * seq
    flops = (
        2 * n_policy * BATCH * (seq - 1)  # generation (its scores give the rollout log-probs)
        + 2 * n_policy * tokens  # reference forward
        + 2 * (n_value + n_reward) * tokens  # value and reward forwards
        + 6 * (n_policy + n_value) * tokens * PPO_EPOCHS
    )  # PPO epochs: policy and value model
    result = summarise_steps(
        walls,
        {
            "sampling": samplings,
            "scoring": [r - s for r, s in zip(rollouts, samplings)],
            "update": [w - r for w, r in zip(walls, rollouts)],
            "rollout": rollouts,
        },
        flops,
    )
    result.update(run_fields(args.size, widths, rss_setup, (load_before, load_after)))
    result.update(
        {
            "side": "trl",
            "step_cpu_seconds": [
                round(marks["cpu"][i + 1] - marks["cpu"][i], 3) for i in range(args.warmup, steps)
            ],
            "bf16": "none",
            "params": {
                "policy": sum(p.numel() for p in policy.parameters()),
                "policy_matmul": n_policy,
                "value_matmul": n_value,
                "reward_matmul": n_reward,
            },
            "models": "policy (trained), separate value model (trained), reference copy, reward model",
            "optimizer": optimizer_name,
            "matmul_fp32_flops": fp32_rate,
            "matmul_bf16_flops": None,
        }
    )
    return result
