"""PPO throughput: samples/s, generated tokens/s and the share of step time spent generating vs training.

    .venv/bin/python benchmarks/ppo_benchmark.py --steps 10 --batch 32 --new-tokens 32

Runs our PPO (`models.ppo`) on the demo-sized tiny Llama with a tiny reward model of the same vocabulary, on
whatever device accelerate picks. No MLflow, no Prefect: this measures the algorithm, not the plumbing.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaForSequenceClassification

from models.ppo import PPOHyperparams, PPOTrainer
from models.reward import reward_scores
from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import PolicyWithValueHead
from tasks.data.demo import build_demo_datasets

SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
         "max_position_embeddings": 256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_args()

    torch.manual_seed(0)
    rows = build_demo_datasets()["sft_train"]
    prompts = [f"User: {row['prompt']}\nAssistant:" for row in rows]
    tokenizer = train_tokenizer(prompts + [row["completion"] for row in rows], 1024, 256)
    policy = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    reference = build_tiny_llama(tokenizer, init_seed=0, **SHAPE)
    reward_model = LlamaForSequenceClassification(policy.config.__class__(**{**policy.config.to_dict(),
                                                                             "num_labels": 1}))
    reward_model.eval()
    hp = PPOHyperparams(rollout_batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=4,
                        learning_rate=1e-4, max_grad_norm=1.0, clip_range=0.2, clip_range_value=0.2, vf_coef=0.1,
                        ent_coef=0.0, gamma=1.0, lam=0.95, whiten_advantages=True, target_approx_kl=None,
                        kl_controller="adaptive", init_kl_coef=0.05, kl_target=6.0, kl_horizon=10000,
                        max_new_tokens=args.new_tokens, temperature=1.0, missing_eos_penalty=None,
                        length_penalty=0.0, seed=0)
    trainer = PPOTrainer(PolicyWithValueHead(policy), tokenizer,
                         lambda p, r: reward_scores(reward_model, tokenizer, p, r, batch_size=args.batch), hp,
                         reference=reference)
    for step in range(args.warmup):
        trainer.step(prompts[step * args.batch:(step + 1) * args.batch])
    rollout = update = tokens = 0.0
    started = time.perf_counter()
    for step in range(args.steps):
        batch = [prompts[(step * args.batch + i) % len(prompts)] for i in range(args.batch)]
        metrics, _ = trainer.step(batch)
        rollout += metrics["rollout_seconds"]
        update += metrics["update_seconds"]
        tokens += metrics["generated_tokens"]
    wall = time.perf_counter() - started
    print(json.dumps({
        "device": str(trainer.accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps, "batch": args.batch, "max_new_tokens": args.new_tokens,
        "samples_per_second": round(args.steps * args.batch / wall, 2),
        "generated_tokens_per_second": round(tokens / rollout, 1),
        "generation_share": round(rollout / (rollout + update), 3),
        "training_share": round(update / (rollout + update), 3),
        "seconds_per_step": round(wall / args.steps, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
