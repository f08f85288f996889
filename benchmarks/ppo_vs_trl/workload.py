"""The workload both sides run: prompts, the character tokenizer, the Llama shapes, seeding, and the measuring
helpers (matmul rate, FLOP counting, peak RSS, step summaries, versions). Standard library only at import time:
the TRL worker imports this module in the anchor venv, where this project is not installed."""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

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

FLOPS_NOTE = (
    "model FLOPs = 2*N*tokens per forward, 6*N*tokens per forward+backward, N = matmul parameters "
    "(all but the input embedding, plus the LM head), tokens = batch * sequence width (prompt + 16); "
    "generation counted as one forward over prompt + 15 tokens (KV cache); attention scores ignored"
)


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


def build_models(size: str):
    """What both sides start from: the tokenizer, the policy (seed 0), its frozen reference copy and the reward
    model (seed 1)."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = build_tokenizer(SIZES[size]["vocab_size"])
    policy = seeded(0, lambda: LlamaForCausalLM(llama_config(size, tokenizer)))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    reward_model = seeded(1, lambda: LlamaForSequenceClassification(llama_config(size, tokenizer, 1)))
    return tokenizer, policy, reference, reward_model


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


def run_fields(size: str, widths: dict[str, int], rss_setup: float, load: tuple) -> dict:
    """The fields every worker reports beside its timings: shape, memory, load on the machine and versions."""
    import torch

    return {
        "size": size,
        "prompt_width": widths["prompt"],
        "response_width": widths["response"],
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_setup_mib": rss_setup,
        "loadavg_before": load[0],
        "loadavg_after": load[1],
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }


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
