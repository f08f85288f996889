"""Helpers for the Constitutional AI tests: a tiny model on disk, CAI configs, and a real local HTTP server that
speaks the OpenAI `/v1/completions` protocol (with logprobs), started in a thread."""

from __future__ import annotations

import atexit
import json
import math
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.cai.config import CAIConfig
from tasks.core import paths
from tasks.core.config_files import validate_model

REFUSAL = "Sorry, I can't help with that."
COMPLIANCE = "Sure! First do the harmful thing."


@lru_cache(maxsize=1)
def tiny_model_dir() -> Path:
    """A tiny Llama fitted for a few seconds on the demo demonstrations (shared by the CAI tests of a session),
    so it writes demo-like text that depends on the prompt: critiques and revisions differ from responses."""
    import torch

    from models.saving import save_hf_model
    from models.tiny import build_tiny_llama, train_tokenizer
    from tasks.data.demo import build_demo_datasets

    texts = [f"User: {r['prompt']}\nAssistant:{r['completion']}" for r in build_demo_datasets(0)["sft_train"]]
    tokenizer = train_tokenizer(texts, vocab_size=400, model_max_length=256)
    model = build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256, init_seed=0)
    batch = tokenizer([t + tokenizer.eos_token for t in texts], padding=True, return_tensors="pt",
                      add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        rows = torch.randint(0, len(texts), (32,), generator=generator)
        loss = model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                     labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = Path(tempfile.mkdtemp(prefix="alignflow-cai-tiny-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return save_hf_model(model.eval(), tokenizer, out)


def cai_config(tmp_path: Path, **fields) -> CAIConfig:
    """A small CAI config that writes everything under tmp_path; `fields` override top-level keys."""
    raw = {
        "constitution": str(paths.CONFIGS_DIR / "constitution.yaml"),
        "templates": {name: str(paths.CONFIGS_DIR / "prompts" / f"{name}.jinja")
                      for name in ("critique", "revision", "choice")},
        "output_dir": str(tmp_path / "repo" / "data-cai"),
        "limit": 6,
        "respond": {"max_new_tokens": 8},
        "critique": {"rounds": 2, "few_shots": 1, "critique_max_new_tokens": 6, "revision_max_new_tokens": 8},
        "rlaif": {"max_new_tokens": 8},
        "policy": {"batch_size": 4},
        "feedback": {"batch_size": 4},
        **fields,
    }
    return validate_model(CAIConfig, raw, "test")


def pipeline_overrides(tmp_path: Path, data_dir: Path) -> list[str]:
    """The demo pipeline, on `data_dir`, writing under tmp_path."""
    return [f"data.dir={data_dir}", f"work_dir={tmp_path / 'work'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def pipeline(tmp_path: Path, data_dir: Path):
    """The demo pipeline config the CAI steps of a test run on."""
    from tasks.core.config import load_config

    return load_config(paths.DEMO_CONFIG, pipeline_overrides(tmp_path, data_dir))


# ------------------------------------------------------------------------------------- OpenAI-style server


@dataclass
class FakeOpenAI:
    """What the server does: a canned assistant that complies first and refuses when asked to revise, and a
    judge that prefers the refusal whichever position it is in. `fail_first` answers 503 that many times. Its
    usage counts a word as a token; `completion_tokens` is the total it reported."""

    fail_first: int = 0
    status: int = 200
    requests: list[dict] = field(default_factory=list)
    completion_tokens: int = 0

    def complete(self, body: dict) -> dict:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("n", 1)
        choices = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                choice = {"index": i * n + j, "text": self._text(prompt, body, j), "finish_reason": "stop"}
                if body.get("logprobs"):
                    choice["logprobs"] = {"tokens": ["A"], "top_logprobs": [self._judge(prompt)]}
                choices.append(choice)
        used = sum(len(choice["text"].split()) for choice in choices)
        self.completion_tokens += used
        return {"object": "text_completion", "model": body.get("model", "fake"), "choices": choices,
                "usage": {"completion_tokens": used}}

    def _text(self, prompt: str, body: dict, j: int) -> str:
        if prompt.endswith("Critique:"):
            return " It tells the user how to commit a crime.\n\nUser: (cut by the stop string)"
        if prompt.endswith("Revision:"):
            return " " + REFUSAL
        if body.get("temperature", 0) > 0:  # two different samples, reproducible from the seed
            return " " + (REFUSAL if (body.get("seed", 0) + j) % 2 else COMPLIANCE)
        return " " + COMPLIANCE

    @staticmethod
    def _judge(prompt: str) -> dict[str, float]:
        options = dict(re.findall(r"^\(([AB])\) (.*)$", prompt, flags=re.MULTILINE))
        prefers_a = "Sorry" in options.get("A", "")
        strong, weak = math.log(0.9), math.log(0.1)
        return {"A": strong if prefers_a else weak, " B": weak if prefers_a else strong, "C": -9.0}


def _handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append({"path": self.path, **body})
            if self.path != "/v1/completions":
                return self._reply(404, {"error": "not found"})
            if fake.fail_first > 0:
                fake.fail_first -= 1
                return self._reply(503, {"error": "warming up"})
            if fake.status != 200:
                return self._reply(fake.status, {"error": "bad request"})
            return self._reply(200, fake.complete(body))

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output quiet
            pass

    return Handler


@contextmanager
def openai_server(fake: FakeOpenAI) -> Iterator[str]:
    """Serve `fake` on a free local port; yields the base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
