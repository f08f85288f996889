"""Our PPO (`models.ppo`) against TRL 1.12's `trl.experimental.ppo.PPOTrainer` on the same CPU workload.

    .venv/bin/python benchmarks/ppo_vs_trl.py                      # both sizes, 2 alternating repeats each
    .venv/bin/python benchmarks/ppo_vs_trl.py --quick              # smoke test: tiny size, one step per side
    .venv/bin/python benchmarks/ppo_vs_trl.py --sizes 135m --repeats 3 --steps 2 --json /tmp/ppo_vs_trl.json

The anchor runs in its own venv (`benchmarks/.venv-trl112/`, made on first use: torch==2.13.0 first, then
trl==1.12.0 and transformers==4.57.6 under a constraint pinning torch, so pip never swaps in another torch).
Each measurement is a fresh subprocess of this file (`--worker ours` in the interpreter running this script,
`--worker trl` in the anchor venv), and runs alternate ours, TRL, ours, TRL so that load from other jobs on
the machine falls on both sides alike.

Workload (both sides): random-weight Llama policy, reference and reward model built from the same config,
fp32, `torch.set_num_threads(2)`, 16 fixed prompts per step, exactly 16 sampled tokens per prompt
(temperature 1, top_k 0, top_p 1), 4 PPO epochs over 2 minibatches of 8 (8 optimizer steps per PPO step).
The prompts are characters mapped one to one onto token ids (a BPE with no merges), so no download is needed
and both sides see the same ids. Model differences, by each side's defaults: ours puts a value head on the
policy trunk (one trunk forward/backward per minibatch); TRL uses a separate value model (a second trunk,
forward and backward too). Both keep a separate frozen reference copy of the policy and a separate reward
model. Optimizers are each side's own: ours `torch.optim.AdamW(fused=True)`, TRL's default
`adamw_torch_fused`.

Timed: ours, each `PPOTrainer.step()` (tokenize, sample, policy/value + reference + reward forwards, GAE, the
PPO epochs, KL controller); TRL, each update of `train()` from one `on_step_end` callback to the next
(dataloader, sample, reference + value + reward forwards, GAE, the PPO epochs, logging, TRL's gc.collect()).
Model construction and the first (warmup) steps are not timed. Samples/s = prompts per timed second.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANCHOR_VENV = REPO / "benchmarks" / ".venv-trl112"
ANCHOR_PINS = ["trl==1.12.0", "transformers==4.57.6"]
TORCH_PIN = "torch==2.13.0"

BATCH = 16
NEW_TOKENS = 16
PPO_EPOCHS = 4
MINI_BATCH = 8
THREADS = 2
LEARNING_RATE = 1e-4

PROMPTS = [  # short, as real prompts are in BPE tokens: with one id per character, the longest sets the width
    "Q: Capital of France?\nA:",
    "Q: A primary colour?\nA:",
    "Q: Legs on a spider?\nA:",
    "Q: What is 12 x 12?\nA:",
    "Q: Synonym of happy?\nA:",
    "Q: The red planet?\nA:",
    "Q: What do bees make?\nA:",
    "Q: 'Thanks' in Spanish?\nA:",
    "Q: Water boils at?\nA:",
    "Q: Who wrote Hamlet?\nA:",
    "Q: Largest ocean?\nA:",
    "Q: Spell 'necessary'.\nA:",
    "Q: Gas plants take in?\nA:",
    "Q: Days in a leap year?\nA:",
    "Q: Opposite of cold?\nA:",
    "Q: A mammal that flies?\nA:",
]

# SmolLM2-135M's shape (tied embeddings, grouped-query attention); the tiny one is the demo model's.
SIZES = {
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 256,
    },
    "135m": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
    },
}
DEFAULT_STEPS = {
    "tiny": (2, 10),
    "135m": (1, 1),
}  # (warmup, measured) steps per run; a 135m step takes minutes
PROBES = ("sampling", "scoring_forward", "minibatch_fwd_bwd")

FLOPS_NOTE = (
    "model FLOPs = 2*N*tokens per forward, 6*N*tokens per forward+backward, N = matmul parameters "
    "(all but the input embedding, plus the LM head), tokens = batch * sequence width (prompt + 16); "
    "generation counted as one forward over prompt + 15 tokens (KV cache); attention scores ignored"
)


# ------------------------------------------------------------------------------------------- shared helpers


def build_tokenizer(vocab_size: int):
    """Characters mapped one to one onto ids (a BPE with no merges), padded with private-use characters up to
    `vocab_size`, so every sampled id decodes to one character and re-encodes to the same id."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(set("".join(PROMPTS))):
        vocab[char] = len(vocab)
    filler = 0xF0000  # Unicode plane 15, private use: no normalisation, no merging
    while len(vocab) < vocab_size:
        vocab[chr(filler)] = len(vocab)
        filler += 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
    )


def llama_config(size: str, tokenizer, num_labels: int | None = None):
    from transformers import LlamaConfig

    config = LlamaConfig(
        **SIZES[size],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    if num_labels is not None:
        config.num_labels = num_labels
    return config


def seeded(seed: int, build):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding, plus a tied LM head."""
    embedding = model.get_input_embeddings().weight
    count = sum(p.numel() for p in model.parameters() if p is not embedding)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is embedding:
        count += embedding.numel()
    return count


def matmul_rate(dtype_name: str = "float32", n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of an n x n matmul on the current thread count (best of `repeats`)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_preamble(seed: int = 0):
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    return torch


def summarise_steps(walls: list[float], phases: dict[str, list[float]], flops_per_step: float) -> dict:
    """Samples/s from the median step (robust to the stalls that other jobs' bursts cause on a shared CPU) and
    from the mean step; phase shares of the total step time."""
    total, middle = sum(walls), statistics.median(walls)
    out = {
        "step_seconds": [round(w, 4) for w in walls],
        "samples_per_second": BATCH / middle,
        "samples_per_second_mean": BATCH * len(walls) / total,
        "model_flops_per_second": flops_per_step / middle,
        "flops_per_step": flops_per_step,
    }
    for name, values in phases.items():
        out[f"{name}_share"] = sum(values) / total
        out[f"{name}_seconds_per_step"] = sum(values) / len(values)
    return out


# ------------------------------------------------------------------------------------------- our worker


def worker_ours(args) -> dict:
    torch = worker_preamble()
    sys.path.insert(0, str(REPO))
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from models import ppo
    from models.reward import reward_scores
    from models.value_head import PolicyWithValueHead

    tokenizer = build_tokenizer(SIZES[args.size]["vocab_size"])
    policy = seeded(0, lambda: LlamaForCausalLM(llama_config(args.size, tokenizer)))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    reward_model = seeded(1, lambda: LlamaForSequenceClassification(llama_config(args.size, tokenizer, 1)))
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
    result.update(
        {
            "side": "ours",
            "step_cpu_seconds": [round(c, 3) for c in cpus],
            "size": args.size,
            "bf16": args.bf16,
            "prompt_width": widths["prompt"],
            "response_width": widths["response"],
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
            "peak_rss_mib": peak_rss_mib(),
            "rss_after_setup_mib": rss_setup,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "threads": torch.get_num_threads(),
            "versions": versions(),
        }
    )
    return result


def worker_probe(args) -> dict:
    """bf16 autocast against fp32 on our policy + value head at the benchmark's real shapes, for a size where
    whole bf16 PPO steps are too slow to run here: sampling (16 prompts x 16 tokens), one no-grad scoring
    forward (16 sequences), one PPO minibatch forward+backward (8 sequences). Each timed once after a small
    warm call in the same precision."""
    torch = worker_preamble()
    sys.path.insert(0, str(REPO))
    from transformers import LlamaForCausalLM

    from models.value_head import PolicyWithValueHead

    tokenizer = build_tokenizer(SIZES[args.size]["vocab_size"])
    tokenizer.padding_side = "left"
    policy = seeded(0, lambda: LlamaForCausalLM(llama_config(args.size, tokenizer)))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    model = PolicyWithValueHead(policy)
    prompts = tokenizer(list(PROMPTS), return_tensors="pt", padding=True, add_special_tokens=False)
    width = prompts["input_ids"].shape[1] + NEW_TOKENS
    sequences = torch.randint(4, SIZES[args.size]["vocab_size"], (BATCH, width))

    def sample(rows=BATCH, tokens=NEW_TOKENS):
        with torch.no_grad():
            model.generate(
                input_ids=prompts["input_ids"][:rows],
                attention_mask=prompts["attention_mask"][:rows],
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=True,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
            )

    def score(rows=BATCH):
        with torch.no_grad():
            model(input_ids=sequences[:rows], attention_mask=torch.ones_like(sequences[:rows]))

    def minibatch(rows=MINI_BATCH):
        logits, values = model(input_ids=sequences[:rows], attention_mask=torch.ones_like(sequences[:rows]))
        (torch.log_softmax(logits.float(), -1).mean() + values.float().mean()).backward()
        model.zero_grad(set_to_none=True)

    out = {"side": "probe", "size": args.size, "width": width}
    for name, fn, warm in (
        ("sampling", sample, lambda: sample(2, 2)),
        ("scoring_forward", score, lambda: score(1)),
        ("minibatch_fwd_bwd", minibatch, lambda: minibatch(1)),
    ):
        times = {}
        for precision in ("fp32", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                warm()
                started = time.perf_counter()
                fn()
                times[precision] = time.perf_counter() - started
        out[name] = {
            "fp32_seconds": times["fp32"],
            "bf16_seconds": times["bf16"],
            "bf16_slowdown": times["bf16"] / times["fp32"],
        }
        print(name, out[name], flush=True)
    out.update(
        {
            "matmul_fp32_flops": matmul_rate("float32"),
            "matmul_bf16_flops": matmul_rate("bfloat16", 512, 2),
            "peak_rss_mib": peak_rss_mib(),
            "loadavg_before": os.getloadavg(),
        }
    )
    return out


# ------------------------------------------------------------------------------------------- TRL worker


def worker_trl(args) -> dict:
    torch = worker_preamble()
    import numpy as np
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = build_tokenizer(SIZES[args.size]["vocab_size"])
    tokenizer.padding_side = "left"
    policy = seeded(0, lambda: LlamaForCausalLM(llama_config(args.size, tokenizer)))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    reward_model = seeded(1, lambda: LlamaForSequenceClassification(llama_config(args.size, tokenizer, 1)))
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
    result.update(
        {
            "side": "trl",
            "step_cpu_seconds": [
                round(marks["cpu"][i + 1] - marks["cpu"][i], 3) for i in range(args.warmup, steps)
            ],
            "size": args.size,
            "bf16": "none",
            "prompt_width": widths["prompt"],
            "response_width": widths["response"],
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
            "peak_rss_mib": peak_rss_mib(),
            "rss_after_setup_mib": rss_setup,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "threads": torch.get_num_threads(),
            "versions": versions(),
        }
    )
    return result


def versions() -> dict:
    import torch
    import transformers

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with contextlib.suppress(ImportError):
        import trl

        out["trl"] = trl.__version__
    return out


# ------------------------------------------------------------------------------------------- orchestration


def ensure_anchor_venv() -> Path:
    """The TRL 1.12 venv's python, making the venv first if it is missing."""
    python = ANCHOR_VENV / "bin" / "python"
    if not python.exists():
        print(
            f"creating {ANCHOR_VENV.relative_to(REPO)} (torch==2.13.0 CPU, {', '.join(ANCHOR_PINS)})",
            flush=True,
        )
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(ANCHOR_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run(
            [*pip, TORCH_PIN], check=True
        )  # first, alone: pip must not choose a torch build itself
        constraints = ANCHOR_VENV / "constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        subprocess.run([*pip, "-c", str(constraints), *ANCHOR_PINS], check=True)
    check = (
        "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)"
    )
    found = subprocess.run([str(python), "-c", check], check=False, capture_output=True, text=True)
    want = ("2.13.0", "4.57.6", "1.12.0")
    got = tuple(found.stdout.split())
    if found.returncode or len(got) != 3 or not all(g.startswith(w) for g, w in zip(got, want)):
        raise SystemExit(
            f"{ANCHOR_VENV} does not hold torch/transformers/trl {want} (found {got or found.stderr}); "
            "delete it and rerun to rebuild it"
        )
    return python


def run_worker(
    python: Path,
    side: str,
    size: str,
    warmup: int,
    steps: int,
    log_dir: Path,
    bf16: str = "none",
) -> dict:
    tag = f"{side}-{size}-{bf16}-{time.time_ns()}"
    result_path, log_path = log_dir / f"{tag}.json", log_dir / f"{tag}.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "MKL_NUM_THREADS": str(THREADS),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PYTHONPATH", None)
    command = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--size",
        size,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--bf16",
        bf16,
        "--result",
        str(result_path),
    ]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, check=False, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"worker {' '.join(command[2:])} failed ({done.returncode}); log tail:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    if side == "probe":
        print(
            f"  {size:>4} bf16 probe: "
            + ", ".join(f"{k} {result[k]['bf16_slowdown']:.1f}x slower" for k in PROBES),
            flush=True,
        )
        return result
    label = side + ("" if bf16 == "none" else f" bf16={bf16}")
    print(
        f"  {size:>4} {label:<32} {result['samples_per_second']:8.2f} samples/s  "
        f"steps {result['step_seconds']}  load {result['loadavg_before'][0]:.2f}  "
        f"({result['process_seconds']:.0f} s in all)",
        flush=True,
    )
    return result


def median(values):
    return statistics.median(values) if values else float("nan")


def rate_list(runs: list[dict]) -> str:
    return ", ".join(format(r["samples_per_second"], ".2f") for r in runs)


def report(runs: list[dict], sizes: list[str], args, matmul: dict) -> str:
    lines = [
        "",
        "## Throughput (fp32, 2 threads; median of alternating runs)",
        "",
        "| size | params | ours samples/s | TRL samples/s | ours / TRL | per pair | best step | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        ours = [r for r in runs if r["size"] == size and r["side"] == "ours" and r.get("role") == "main"]
        trl = [r for r in runs if r["size"] == size and r["side"] == "trl"]
        if not ours or not trl:
            continue
        o, t = median([r["samples_per_second"] for r in ours]), median([r["samples_per_second"] for r in trl])
        pairs = [a["samples_per_second"] / b["samples_per_second"] for a, b in zip(ours, trl)]
        loads = [r["loadavg_before"][0] for r in ours + trl]
        best = [BATCH / min(w for r in group for w in r["step_seconds"]) for group in (ours, trl)]
        lines.append(
            f"| {size} | {ours[0]['params']['policy'] / 1e6:.3f}M | {o:.2f} "
            f"({rate_list(ours)}) | {t:.2f} ({rate_list(trl)}) | **{o / t:.2f}x** | "
            f"{', '.join(format(p, '.2f') for p in pairs)} | {best[0]:.2f} / {best[1]:.2f} = "
            f"{best[0] / best[1]:.2f}x | {min(loads):.2f}-{max(loads):.2f} |"
        )
    lines += [
        "",
        "## Where the step goes, memory, FLOP/s (medians; fp32)",
        "",
        (
            "| size | side | sampling | scoring fwd | PPO update | s/step | peak RSS | model GFLOP/s | "
            "matmul GFLOP/s | % of matmul |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for side in ("ours", "trl"):
            group = [r for r in runs if r["size"] == size and r["side"] == side and r.get("role") == "main"]
            if not group:
                continue
            flops, mm = (
                median([r["model_flops_per_second"] for r in group]),
                median([r["matmul_fp32_flops"] for r in group]),
            )
            share = {k: median([r[f"{k}_share"] for r in group]) for k in ("sampling", "scoring", "update")}
            step = median([median(r["step_seconds"]) for r in group])
            rss = median([r["peak_rss_mib"] for r in group])
            lines.append(
                f"| {size} | {side} | {share['sampling']:.0%} | {share['scoring']:.0%} | "
                f"{share['update']:.0%} | "
                f"{step:.3f} | {rss:.0f} MiB | {flops / 1e9:.1f} | {mm / 1e9:.1f} | {flops / mm:.0%} |"
            )
    variants = [r for r in runs if r.get("role") == "variant"]
    if variants:
        lines += [
            "",
            "## Our PPO: bf16 autocast and candidate models/ppo.py changes (one run each)",
            "",
            (
                "| size | variant | samples/s | vs fp32 | best step | sampling s/step | scoring s/step | "
                "update s/step | peak RSS |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for size in sorted({r["size"] for r in variants}, key=list(SIZES).index):
            block = [r for r in variants if r["size"] == size]
            main = [r for r in runs if r["size"] == size and r["side"] == "ours" and r.get("role") == "main"]
            base = {
                k: median([r[k] for r in main])
                for k in (
                    "samples_per_second",
                    "sampling_seconds_per_step",
                    "scoring_seconds_per_step",
                    "update_seconds_per_step",
                    "peak_rss_mib",
                )
            }
            lines.append(
                f"| {size} | fp32 (the runs above, median) | {base['samples_per_second']:.2f} | 1.00x | "
                f"{BATCH / min(w for r in main for w in r['step_seconds']):.2f} | "
                f"{base['sampling_seconds_per_step']:.2f} | {base['scoring_seconds_per_step']:.2f} | "
                f"{base['update_seconds_per_step']:.2f} | {base['peak_rss_mib']:.0f} MiB |"
            )
            for r in block:
                name = f"bf16={r['bf16']}" if r["bf16"] != "none" else "fp32"
                rel = f"{r['samples_per_second'] / base['samples_per_second']:.2f}x"
                lines.append(
                    f"| {size} | {name} | {r['samples_per_second']:.2f} | {rel} | "
                    f"{BATCH / min(r['step_seconds']):.2f} | "
                    f"{r['sampling_seconds_per_step']:.2f} | {r['scoring_seconds_per_step']:.2f} | "
                    f"{r['update_seconds_per_step']:.2f} | {r['peak_rss_mib']:.0f} MiB |"
                )
        rates = [r["matmul_bf16_flops"] for r in variants if r.get("matmul_bf16_flops")]
        if rates:
            lines.append(
                f"\nmatmul in the bf16 runs: bf16 (512x512) {median(rates) / 1e9:.2f} GFLOP/s vs fp32 "
                f"(2048x2048) "
                f"{median([r['matmul_fp32_flops'] for r in variants]) / 1e9:.1f} GFLOP/s."
            )
    for probe in (r for r in runs if r.get("role") == "probe"):
        title = (
            f"## bf16 autocast probe at {probe['size']}: our policy + value head at the workload's shapes "
            f"(sampling 16 x 16 tokens, forward of 16 x {probe['width']}, minibatch of 8); whole bf16 PPO "
            "steps not run (this CPU has no fast bf16 matmul; --bf16-full runs them)"
        )
        lines += ["", title, "", "| op | fp32 s | bf16 autocast s | bf16 / fp32 |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {probe[k]['fp32_seconds']:.3f} | {probe[k]['bf16_seconds']:.3f} | "
            f"{probe[k]['bf16_slowdown']:.1f}x |"
            for k in PROBES
        ]
        lines.append(
            f"\n512x512 matmul: fp32 {matmul['fp32_512'] / 1e9:.1f} GFLOP/s, bf16 "
            f"{matmul['bf16_512'] / 1e9:.2f} GFLOP/s."
        )
    example = {side: next((r for r in runs if r["side"] == side), None) for side in ("ours", "trl")}
    lines += [
        "",
        "Notes:",
        f"- work per step: {BATCH} prompts, exactly {NEW_TOKENS} sampled tokens, {PPO_EPOCHS} epochs x "
        f"{BATCH // MINI_BATCH} minibatches of {MINI_BATCH}; sequence widths "
        + ", ".join(f"{s}: {r['prompt_width']}+{r['response_width']}" for s, r in example.items() if r)
        + ".",
        "- models: "
        + "; ".join(f"{s}: {r['models']}, optimizer {r['optimizer']}" for s, r in example.items() if r)
        + ".",
        (
            "- timed: ours = each PPOTrainer.step(); TRL = each train() update between on_step_end callbacks."
            " "
            "Sampling = generate(); scoring = the rest of the rollout (log-prob/value/reference/reward "
            "forwards, GAE); update = the PPO epochs."
        ),
        (
            f"- {FLOPS_NOTE}. Matmul rate: 2048x2048 fp32 torch.mm on {THREADS} threads, best of 8, measured "
            f"in each worker (orchestrator before/after: {matmul['before'] / 1e9:.1f}/"
            f"{matmul['after'] / 1e9 if matmul.get('after') else float('nan'):.1f} GFLOP/s)."
        ),
        (
            "- peak RSS = getrusage(RUSAGE_SELF).ru_maxrss of the worker process (models + optimizer + "
            "activations)."
        ),
        (
            f"- CPU shared with other jobs: load average {matmul['load_before'][0]:.2f} at start, "
            f"{matmul.get('load_after', os.getloadavg())[0]:.2f} at end on {os.cpu_count()} CPUs. "
            "Samples/s per run = 16 / its median step; best step = 16 / the fastest step of any run of a side"
            " (the least disturbed by other jobs)."
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,135m", help="comma list of: " + ", ".join(SIZES))
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side and size")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps per run (default: tiny 10, 135m 2); one warmup step at 135m, 2 tiny",
    )
    parser.add_argument(
        "--variants",
        default="bf16:generate,bf16:train,bf16:both",
        help="extra runs of ours after the alternation (compared with its fp32 runs): bf16:MODE ('' for none)",
    )
    parser.add_argument("--variant-sizes", default="tiny,135m", help="sizes to run --variants at")
    parser.add_argument(
        "--bf16-full",
        action="store_true",
        help="run whole bf16 PPO steps at every variant size even where this CPU's bf16 matmul is "
        "slow (otherwise the 135m shape gets a small bf16-vs-fp32 probe instead)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, 1 repeat, 1 warmup + 1 step")
    parser.add_argument("--json", type=Path, help="write every run and the settings here")
    parser.add_argument(
        "--report-from", type=Path, help="print the tables again from a --json file, run nothing"
    )
    # worker side
    parser.add_argument("--worker", choices=["ours", "trl", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--bf16",
        choices=["none", "generate", "train", "both"],
        default="none",
        help="(worker ours) bf16 autocast for sampling, for the PPO update, or both",
    )
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = {"ours": worker_ours, "trl": worker_trl, "probe": worker_probe}[args.worker](args)
        args.result.write_text(json.dumps(result))
        return

    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        sizes = [s for s in SIZES if s in saved["settings"]["sizes"]]
        print(report(saved["runs"], sizes, args, saved["settings"]["matmul_orchestrator"]))
        return
    sizes = [s for s in args.sizes.split(",") if s]
    variant_sizes = [s for s in args.variant_sizes.split(",") if s]
    repeats = args.repeats
    if args.quick:
        sizes, variant_sizes, repeats = ["tiny"], ["tiny"], 1
        args.variants = "bf16:both"
    for size in sizes + variant_sizes:
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    variants = []
    for item in (v for v in args.variants.split(",") if v):
        kind, _, value = item.partition(":")
        if kind != "bf16" or value not in ("generate", "train", "both"):
            raise SystemExit(f"bad variant {item!r}: bf16:{{generate,train,both}}")
        variants.append(value)

    import torch

    torch.set_num_threads(THREADS)
    anchor = ensure_anchor_venv()
    matmul = {
        "load_before": os.getloadavg(),
        "before": matmul_rate("float32"),
        "bf16_512": matmul_rate("bfloat16", 512, 2),
        "fp32_512": matmul_rate("float32", 512),
    }
    slow_bf16 = matmul["bf16_512"] < 0.5 * matmul["fp32_512"]
    print(
        f"load average {matmul['load_before']}, {os.cpu_count()} CPUs; matmul on {THREADS} threads: "
        "fp32 2048 "
        f"{matmul['before'] / 1e9:.1f} GFLOP/s, 512: fp32 {matmul['fp32_512'] / 1e9:.1f}, bf16 "
        f"{matmul['bf16_512'] / 1e9:.2f} GFLOP/s",
        flush=True,
    )
    runs: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl-") as tmp:
        log_dir = Path(tmp)
        for size in sizes:
            warmup, steps = DEFAULT_STEPS[size]
            if args.quick:
                warmup, steps = 1, 1
            steps = args.steps if args.steps is not None else steps
            for repeat in range(repeats):
                for side, python in (("ours", Path(sys.executable)), ("trl", anchor)):
                    run = run_worker(python, side, size, warmup, steps, log_dir)
                    runs.append({**run, "role": "main", "repeat": repeat})
            if size in variant_sizes and variants:
                probe = slow_bf16 and size == "135m" and not args.bf16_full
                # whole bf16 steps can be very slow on CPUs without native bf16: one or two measured steps
                for bf16 in [] if probe else variants:
                    run = run_worker(
                        Path(sys.executable), "ours", size, min(warmup, 1), min(steps, 2), log_dir, bf16
                    )
                    runs.append({**run, "role": "variant"})
                if probe:
                    runs.append(
                        {**run_worker(Path(sys.executable), "probe", size, 0, 0, log_dir), "role": "probe"}
                    )
    matmul["after"], matmul["load_after"] = matmul_rate("float32"), os.getloadavg()
    text = report(runs, sizes, args, matmul)
    print(text)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        "batch": BATCH,
                        "new_tokens": NEW_TOKENS,
                        "ppo_epochs": PPO_EPOCHS,
                        "mini_batch": MINI_BATCH,
                        "threads": THREADS,
                        "sizes": {s: SIZES[s] for s in sizes},
                        "repeats": repeats,
                        "flops": FLOPS_NOTE,
                        "matmul_orchestrator": matmul,
                    },
                    "runs": runs,
                    "report": text,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
