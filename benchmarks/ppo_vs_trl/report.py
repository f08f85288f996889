"""The Markdown report of a benchmark run: throughput, where the step goes, the bf16 variants and probe, notes."""

from __future__ import annotations

import os
import statistics

from .worker_probe import PROBES
from .workload import BATCH, FLOPS_NOTE, MINI_BATCH, NEW_TOKENS, PPO_EPOCHS, SIZES, THREADS


def median(values):
    return statistics.median(values) if values else float("nan")


def rate_list(runs: list[dict]) -> str:
    return ", ".join(format(r["samples_per_second"], ".2f") for r in runs)


def report(runs: list[dict], sizes: list[str], matmul: dict) -> str:
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
