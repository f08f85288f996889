"""Our PPO (`models.ppo`) against TRL 1.12's `trl.experimental.ppo.PPOTrainer` on the same CPU workload.

    .venv/bin/python benchmarks/ppo_vs_trl.py                      # both sizes, 2 alternating repeats each
    .venv/bin/python benchmarks/ppo_vs_trl.py --quick              # smoke test: tiny size, one step per side
    .venv/bin/python benchmarks/ppo_vs_trl.py --sizes 135m --repeats 3 --steps 2 --json /tmp/ppo_vs_trl.json

The anchor runs in its own venv (`benchmarks/.venv-trl112/`, made on first use: torch==2.13.0 first, then
trl==1.12.0 and transformers==4.57.6 under a constraint pinning torch, so pip never swaps in another torch).
Each measurement is a fresh subprocess of `benchmarks/ppo_vs_trl.py` (`--worker ours` in the interpreter running
it, `--worker trl` in the anchor venv), and runs alternate ours, TRL, ours, TRL so that load from other jobs on
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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import worker_ours, worker_probe, worker_trl
from .anchor_venv import ensure_anchor_venv
from .report import report
from .worker_probe import PROBES
from .workload import BATCH, FLOPS_NOTE, MINI_BATCH, NEW_TOKENS, PPO_EPOCHS, REPO, SIZES, THREADS, matmul_rate

SCRIPT = REPO / "benchmarks" / "ppo_vs_trl.py"  # the command; each worker is a fresh process of it, --worker SIDE
DEFAULT_STEPS = {
    "tiny": (2, 10),
    "135m": (1, 1),
}  # (warmup, measured) steps per run; a 135m step takes minutes


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
        str(SCRIPT),
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
        result = {"ours": worker_ours.run, "trl": worker_trl.run, "probe": worker_probe.run}[args.worker](args)
        args.result.write_text(json.dumps(result))
        return

    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        sizes = [s for s in SIZES if s in saved["settings"]["sizes"]]
        print(report(saved["runs"], sizes, saved["settings"]["matmul_orchestrator"]))
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
    text = report(runs, sizes, matmul)
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
