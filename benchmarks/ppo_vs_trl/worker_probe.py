"""Worker `probe`: bf16 autocast against fp32 on our policy + value head, op by op, where whole bf16 PPO steps
are too slow to time. Run by the harness as `benchmarks/ppo_vs_trl.py --worker probe` in a fresh process (at
135m when this CPU's bf16 matmul is slow, unless --bf16-full); `run` returns the JSON."""

from __future__ import annotations

import os
import sys
import time

from .workload import (
    BATCH,
    MINI_BATCH,
    NEW_TOKENS,
    PROMPTS,
    REPO,
    SIZES,
    build_tokenizer,
    llama_config,
    matmul_rate,
    peak_rss_mib,
    seeded,
    worker_preamble,
)

PROBES = ("sampling", "scoring_forward", "minibatch_fwd_bwd")  # the ops timed, keys of the result


def run(args) -> dict:
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
