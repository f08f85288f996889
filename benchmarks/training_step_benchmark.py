"""Training steps of `models/` timed, on a GPU or this CPU: a DPO step and a PPO step on a SmolLM2-135M-shaped
and a Qwen2.5-0.5B-shaped model, in fp32 or bf16 mixed precision, as samples/s and model FLOP/s against the
device's peak. The performance issue's GPU check: it needs `models/`, torch, transformers, peft and accelerate
only (no MLflow, no Prefect) and builds its models from config with random weights, so nothing is downloaded.

    .venv/bin/python benchmarks/training_step_benchmark.py       # this CPU: the 135m shape, fp32 and bf16
    python benchmarks/training_step_benchmark.py --device cuda --sizes 135m 0.5b --precisions bf16 --json gpu.json

Each (size, precision) runs in a fresh process of this file (accelerate keeps one mixed-precision setting per
process), one after another. The steps are shaped as the SmolLM2 pipeline's (configs/pipelines/smollm2.yaml):
LoRA r 16 on every projection of the top half of the layers, 48-token prompts, 64-token answers.

- DPO: 8 pairs. The policy's log-probs of chosen and rejected answers (one forward of 16 rows), the sigmoid loss
  (`models.losses.dpo_loss`, beta 0.1) against reference log-probs computed once beforehand (as the pipeline
  caches them), backward, AdamW. A sample is a pair.
- PPO: `models.ppo.PPOTrainer.step` on 16 prompts: sample 64 tokens at temperature 1 (`models.generation.decode`,
  no EOS: random weights never stop early), policy + value head and reference (adapters disabled) forwards, a
  rule reward (no reward model), 2 epochs of minibatches of 8. A sample is an answer. Its rollout and update
  shares come from the step's own clock. In bf16 only what goes through the prepared model runs under autocast
  (the update's forwards and backwards, the rollout's policy and value forward): sampling and the reference's
  forward use the unwrapped policy and stay float32, as in the pipeline's PPO.

Model FLOPs count 2 per weight per token for a forward, and 2 more per weight per token backward where gradients
flow (the adapted top layers and the LM head; a frozen weight gets no weight gradient); the LM head only where
log-probs are read (the answer's positions); LoRA's own products and attention scores are left out. The peak is
the GPU's dense bf16 rate from its data sheet (`--peak-tflops` for a GPU not listed) or, on a CPU, this
machine's matmul rate measured in the step's precision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ppo_vs_trl.workload import PROMPTS, SIZES, build_tokenizer, seeded

SHAPES = {**SIZES, "0.5b": {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
                            "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}}  # Qwen2.5-0.5B's shape
GPU_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM data sheets
PAIRS, PROMPTS_PER_STEP, PROMPT_TOKENS, ANSWER_TOKENS = 8, 16, 48, 64
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["135m"], choices=sorted(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up step)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, where it is not listed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)  # a worker
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.device, args.peak_tflops)))
        return
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            command = [sys.executable, __file__, "--one", size, precision, "--steps", str(args.steps),
                       "--device", args.device] + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{size} {precision} failed:\n{done.stderr[-3000:]}")
            rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def measure(size: str, precision: str, steps: int, device: str, peak_tflops: float | None) -> list[dict]:
    """The DPO and the PPO row of one (size, precision), in this process."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no")
    tokenizer = build_tokenizer(SHAPES[size]["vocab_size"])
    peak = _peak_flops(device, precision, peak_tflops)
    common = {"size": size, "precision": precision, "device": _device_name(device), "peak_tflops": peak / 1e12
              if peak else None, "torch": torch.__version__, "threads": torch.get_num_threads()}
    rows = []
    for kind, timed_steps in (("dpo", _dpo_steps), ("ppo", _ppo_steps)):
        model = _lora_policy(size, tokenizer)
        seconds, flops, samples, split = timed_steps(model, tokenizer, accelerator, steps)
        rows.append({**common, "step": kind, "seconds_per_step": seconds, "samples_per_second": samples / seconds,
                     "model_tflops": flops / seconds / 1e12,
                     "share_of_peak": flops / seconds / peak if peak else None, **split})
        del model
    return rows


def _lora_policy(size: str, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[size], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, attn_implementation="sdpa")
    layers = config.num_hidden_layers
    model = seeded(0, lambda: LlamaForCausalLM(config))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                      layers_to_transform=list(range(layers - layers // 2, layers)), layers_pattern="layers")
    return seeded(0, lambda: get_peft_model(model, lora))


def _weights(model) -> tuple[int, int, int]:
    """Matmul weights (every linear layer of the trunk, the LM head, the top half's share of the trunk)."""
    import torch

    base = model.get_base_model()
    trunk = sum(m.weight.numel() for name, m in base.model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lora_" not in name)
    head = base.lm_head.weight.numel()
    layers = base.config.num_hidden_layers
    return trunk, head, trunk * (layers // 2) // layers


def _synchronized(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _dpo_steps(model, tokenizer, accelerator, steps: int) -> tuple[float, float, int, dict]:
    import torch

    from models.losses import dpo_loss
    from models.sequence_logprobs import causal_lm_response_logprobs

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (2 * PAIRS, PROMPT_TOKENS + ANSWER_TOKENS), generator=generator)
    ids = ids.to(accelerator.device)  # random tokens past the specials: the cost does not depend on which
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)

    def sequence_logps():
        return causal_lm_response_logprobs(model, ids, mask, PROMPT_TOKENS).sum(dim=1)  # (2N,)

    with torch.no_grad(), accelerator.unwrap_model(model).disable_adapter():
        reference = sequence_logps()
    walls = []
    for _ in range(steps + 1):
        started = _synchronized(accelerator.device)
        policy = sequence_logps()
        loss, _ = dpo_loss(policy[:PAIRS], policy[PAIRS:], reference[:PAIRS], reference[PAIRS:], beta=0.1)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        walls.append(_synchronized(accelerator.device) - started)
    trunk, head, backprop = _weights(accelerator.unwrap_model(model))
    flops = 2 * PAIRS * (_forward_flops(trunk, head) + _backward_flops(backprop, head))
    return statistics.median_high(walls[1:]), flops, PAIRS, {}


def _ppo_steps(model, tokenizer, accelerator, steps: int) -> tuple[float, float, int, dict]:
    import torch

    from models.ppo import PPOHyperparams, PPOTrainer
    from models.value_head import PolicyWithValueHead

    prompts = [(p + " ") * 4 for p in PROMPTS][:PROMPTS_PER_STEP]
    prompts = [p[:PROMPT_TOKENS] for p in prompts]  # one character, one token: every prompt 48 tokens

    def rule_reward(_prompts, responses):
        return torch.tensor([len(r) / 100 for r in responses])

    hp = PPOHyperparams(rollout_batch_size=PROMPTS_PER_STEP, mini_batch_size=8, ppo_epochs=2, learning_rate=1e-4,
                        max_grad_norm=1.0, clip_range=0.2, clip_range_value=0.2, vf_coef=0.1, ent_coef=0.0,
                        gamma=1.0, lam=0.95, whiten_advantages=True, target_approx_kl=None, kl_controller="fixed",
                        init_kl_coef=0.05, kl_target=None, kl_horizon=10000, max_new_tokens=ANSWER_TOKENS,
                        temperature=1.0, missing_eos_penalty=None, length_penalty=0.0, seed=0)
    trainer = PPOTrainer(PolicyWithValueHead(model), tokenizer, rule_reward, hp, accelerator=accelerator)
    walls, rollouts, updates = [], [], []
    for _ in range(steps + 1):
        started = _synchronized(accelerator.device)
        metrics, _ = trainer.step(prompts)
        walls.append(_synchronized(accelerator.device) - started)
        rollouts.append(metrics["rollout_seconds"])
        updates.append(metrics["update_seconds"])
    trunk, head, backprop = _weights(model)
    sampling = 2 * trunk * PROMPT_TOKENS + 2 * (trunk + head) * ANSWER_TOKENS
    forward, backward = _forward_flops(trunk, head), _backward_flops(backprop, head)
    # per answer: sampling, the rollout's policy and reference forwards, then each epoch's forward and backward
    flops = PROMPTS_PER_STEP * (sampling + 2 * forward + hp.ppo_epochs * (forward + backward))
    wall = statistics.median_high(walls[1:])
    return wall, flops, PROMPTS_PER_STEP, {"rollout_share": statistics.median_high(rollouts[1:]) / wall,
                                           "update_share": statistics.median_high(updates[1:]) / wall}


def _forward_flops(trunk: int, head: int) -> int:
    """One row's forward: every trunk weight at every position, the LM head at the answer's (and the last)."""
    return 2 * trunk * (PROMPT_TOKENS + ANSWER_TOKENS) + 2 * head * (ANSWER_TOKENS + 1)


def _backward_flops(backprop: int, head: int) -> int:
    """One row's backward: input gradients through the adapted layers and the LM head (no frozen weight's own)."""
    return 2 * backprop * (PROMPT_TOKENS + ANSWER_TOKENS) + 2 * head * (ANSWER_TOKENS + 1)


def _peak_flops(device: str, precision: str, peak_tflops: float | None) -> float | None:
    import torch

    if peak_tflops:
        return peak_tflops * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        listed = [tflops for gpu, tflops in GPU_BF16_PEAK_TFLOPS.items() if gpu in name]
        return listed[0] * 1e12 if listed else None
    from benchmarks.ppo_vs_trl.workload import matmul_rate

    return matmul_rate("bfloat16" if precision == "bf16" else "float32")


def _device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def table(rows: list[dict]) -> str:
    header = ("| size | precision | step | s/step | samples/s | model TFLOP/s | peak TFLOP/s | share of peak "
              "| rollout / update |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        share = f"{row['share_of_peak']:.1%}" if row["share_of_peak"] is not None else "n/a"
        split = (f"{row['rollout_share']:.0%} / {row['update_share']:.0%}" if "rollout_share" in row else "")
        lines.append(f"| {row['size']} | {row['precision']} | {row['step']} | {row['seconds_per_step']:.2f} | "
                     f"{row['samples_per_second']:.2f} | {row['model_tflops']:.3f} | {_number(row['peak_tflops'])} | "
                     f"{share} | {split} |")
    return "\n".join(lines) + f"\n\ndevice: {rows[0]['device'] if rows else '?'}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
