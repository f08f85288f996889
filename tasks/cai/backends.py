"""Where the CAI models run: a local transformers model, or an OpenAI-compatible HTTP server (e.g. vLLM).

Both backends answer the same four questions, so the critique-revision loop and the labeler never know
which one they talk to:

* `format_request(prompt)`: a user request as the text the model continues (the pipeline's prompt format);
* `generate(prompts, max_new_tokens)`: greedy continuations, batched;
* `sample(prompts, n, ...)`: n sampled continuations of each prompt, reproducible from one seed per call;
* `option_logprobs(prompts, options)`: log p(option | prompt) for each answer label of a multiple choice.

Generated text ends at the first stop string. The local backend cuts a prompt that does not fit the model's
context from the left (few-shot examples go first) and counts how often it had to. The HTTP backend retries
connection errors, 429 and 5xx with exponential backoff, then raises `EndpointUnavailableError` naming the
URL and the last error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx
import torch

from models.generation import generate
from models.losses import masked_sum
from models.prompting import prompt_formatter
from models.scoring import completion_token_logprobs
from tasks.cai.config import BackendSection
from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError, ConfigError
from tasks.registry.logged_models import load_stage_model

log = logging.getLogger(__name__)


class EndpointError(AlignflowError):
    """The endpoint answered, but with something no retry will fix (a 4xx, or a malformed body)."""


class EndpointUnavailableError(AlignflowError):
    """The endpoint did not answer usefully after every retry."""


class Backend(Protocol):
    identity: str
    truncated_prompts: int
    generated_tokens: int | None  # by this backend so far; None when it cannot tell

    def format_request(self, prompt: str) -> str: ...

    def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[str]: ...

    def sample(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
               seed: int) -> list[list[str]]: ...

    def option_logprobs(self, prompts: list[str], options: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...


def open_backend(config: BackendSection, *, model_uri: str | None, pipeline: PipelineConfig, stop: Sequence[str],
                 download_dir: Path) -> Backend:
    """The backend a config section names; `model_uri` is the resolved local model (ignored over http)."""
    if config.kind == "local":
        if model_uri is None:
            raise ConfigError("a local backend needs a model: set its model_uri")
        model, tokenizer = load_stage_model(pipeline, model_uri, download_dir)
        format_prompt = prompt_formatter(tokenizer, pipeline.model.prompt_format, pipeline.model.prompt_template)
        return LocalBackend(model, tokenizer, format_prompt, batch_size=config.batch_size, stop=stop,
                            identity=config.identity() if config.model_uri else f"local:{model_uri}")
    if config.kind == "http":
        return HttpBackend(config, stop=stop, prompt_template=pipeline.model.prompt_template,
                           prompt_format=pipeline.model.prompt_format)
    raise ValueError(f"unknown backend kind {config.kind!r}; expected 'local' or 'http'")


def check_http_formats(policy: BackendSection, feedback: BackendSection, critique_format: str,
                       prompt_format: str) -> None:
    """An http backend sends text to /v1/completions; the chat template lives with the server's tokenizer. So it can
    format a request only in the plain format, and a feedback model reached over http reads text prompts."""
    if policy.kind == "http" and prompt_format != "plain":
        raise ConfigError("policy.kind=http needs model.prompt_format=plain in the pipeline config: /v1/completions "
                          "takes text, and the chat template lives with the server's tokenizer")
    if feedback.kind == "http" and critique_format == "chat":
        raise ConfigError("feedback.kind=http needs critique.format=text: chat turns would need the server's chat "
                          "template (critiques, revisions and labels are sent as text)")


def generated_tokens(step: str, *backends: Backend | None) -> dict[str, float]:
    """`cai/<step>/generated_tokens`: what the step's distinct backends generated in this run (a resumed record
    costs nothing again); no metric when a backend cannot tell."""
    counts = [b.generated_tokens for b in {id(b): b for b in backends if b is not None}.values()]
    return {} if None in counts else {f"cai/{step}/generated_tokens": float(sum(counts))}


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first stop string (all of it when none occurs)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


def choice_probability(logprobs: Sequence[float]) -> float:
    """P(first option) among the two, from their log-probs; 0.5 when neither was scored (both -inf)."""
    first, second = logprobs
    if first == second == -math.inf:
        return 0.5
    return 1.0 / (1.0 + math.exp(second - first)) if second - first < 700 else 0.0


# ------------------------------------------------------------------------------------------------- local


class LocalBackend:
    def __init__(self, model, tokenizer, format_prompt, *, batch_size: int, stop: Sequence[str], identity: str):
        self.model = model.to("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = tokenizer
        self.format_request = format_prompt
        self.batch_size = batch_size
        self.stop = list(stop)
        self.identity = identity
        self.truncated_prompts = 0
        self.generated_tokens: int | None = 0
        self._max_positions = getattr(model.config, "max_position_embeddings", None)

    def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        fitted = [self._fit(p, reserve=max_new_tokens) for p in prompts]
        texts = generate(self.model, self.tokenizer, fitted, max_new_tokens=max_new_tokens, batch_size=self.batch_size)
        self._count(texts)
        return [cut_at_stop(t, self.stop) for t in texts]

    def sample(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
               seed: int) -> list[list[str]]:
        fitted = [self._fit(p, reserve=max_new_tokens) for p in prompts for _ in range(n)]
        with torch.random.fork_rng():  # the seed is this call's alone; the global RNG is left as it was
            torch.manual_seed(seed)
            texts = generate(self.model, self.tokenizer, fitted, max_new_tokens=max_new_tokens,
                             batch_size=self.batch_size * n, do_sample=True, temperature=temperature)
        self._count(texts)
        texts = [cut_at_stop(t, self.stop) for t in texts]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def option_logprobs(self, prompts: list[str], options: Sequence[str]) -> list[list[float]]:
        reserve = max(len(self.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options) + 1
        fitted = [self._fit(p, reserve=reserve) for p in prompts]
        pair_prompts = [p for p in fitted for _ in options]
        pair_options = [o for _ in fitted for o in options]
        scores: list[float] = []
        batches = completion_token_logprobs(self.model, self.tokenizer, pair_prompts, pair_options, self.batch_size)
        for token_logprobs, mask in batches:  # (B, T-1) each
            mask = mask.clone()
            eos = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # (B,) the EOS the scorer appends to each option
            mask[torch.arange(mask.shape[0]), eos] = 0  # score the label's own tokens, not "and then stop"
            scores.extend(masked_sum(token_logprobs, mask, dim=-1).tolist())
        k = len(options)
        return [scores[i * k : (i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        self.model = None

    def _count(self, texts: list[str]) -> None:
        # Re-tokenized text, before the stop strings cut it: what the model generated, up to its EOS.
        self.generated_tokens += sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def _fit(self, prompt: str, reserve: int) -> str:
        """Keep the last tokens of a prompt that would overflow the context, leaving `reserve` positions free."""
        if self._max_positions is None:
            return prompt
        ids = self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        room = self._max_positions - reserve
        if len(ids) <= room:
            return prompt
        self.truncated_prompts += 1
        return self.tokenizer.decode(ids[-room:])


# -------------------------------------------------------------------------------------------------- http


class HttpBackend:
    def __init__(self, config: BackendSection, *, stop: Sequence[str], prompt_template: str, prompt_format: str):
        self.config = config
        self.prompt_format = prompt_format
        self.endpoint = config.url.rstrip("/") + "/completions"
        self.stop = list(stop)
        self.prompt_template = prompt_template
        self.identity = config.identity()
        self.truncated_prompts = 0  # the server rejects what does not fit; nothing is cut here
        self.generated_tokens: int | None = 0  # from the responses' usage; None once a response has none
        self._client = httpx.Client(timeout=config.timeout_s)

    def format_request(self, prompt: str) -> str:
        if self.prompt_format != "plain" or not isinstance(prompt, str):
            raise ConfigError("an http backend formats requests only as plain text (model.prompt_format=plain, "
                              "critique.format=text); see check_http_formats")
        return self.prompt_template.format(prompt=prompt)

    def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        texts = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = prompts[start : start + self.config.batch_size]
            choices = self._complete(batch, len(batch), max_tokens=max_new_tokens, temperature=0.0)
            texts.extend(cut_at_stop(c["text"], self.stop) for c in choices)
        return texts

    def sample(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
               seed: int) -> list[list[str]]:
        samples = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = prompts[start : start + self.config.batch_size]
            choices = self._complete(batch, len(batch) * n, max_tokens=max_new_tokens, temperature=temperature, n=n,
                                     seed=seed)  # choice index = prompt index * n + sample index
            texts = [cut_at_stop(c["text"], self.stop) for c in choices]
            samples.extend(texts[i * n : (i + 1) * n] for i in range(len(batch)))
        return samples

    def option_logprobs(self, prompts: list[str], options: Sequence[str]) -> list[list[float]]:
        """Scores each label by the next-token log-probs the server reports (the top-k; a label not among them
        gets -inf). Labels are matched ignoring surrounding spaces, so " A" and "A" both count."""
        scores = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = prompts[start : start + self.config.batch_size]
            choices = self._complete(batch, len(batch), max_tokens=1, temperature=0.0,
                                     logprobs=self.config.top_logprobs)
            for choice in choices:
                top = _first_top_logprobs(choice, self.endpoint)
                scores.append([_label_logprob(top, option) for option in options])
        return scores

    def close(self) -> None:
        self._client.close()

    def _complete(self, prompt: str | list[str], expected: int, **fields) -> list[dict]:
        payload = {"prompt": prompt, **fields}
        if self.stop and fields.get("max_tokens", 0) > 1:
            payload["stop"] = self.stop
        if self.config.model_name:
            payload["model"] = self.config.model_name
        body = self._post(payload)
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or len(choices) != expected:
            raise EndpointError(f"{self.endpoint}: expected {expected} choices, got {str(body)[:300]}")
        used = (body.get("usage") or {}).get("completion_tokens")
        self.generated_tokens = None if used is None or self.generated_tokens is None else self.generated_tokens + used
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _post(self, payload: dict) -> dict:
        attempts = self.config.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                delay = self.config.backoff_s * 2 ** (attempt - 1)
                log.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", self.endpoint, attempt, attempts,
                            last_error, delay)
                time.sleep(delay)
            try:
                response = self._client.post(self.endpoint, json=payload)
            except httpx.TransportError as err:  # refused, reset, timed out: the server may come back
                last_error = f"{type(err).__name__}: {err}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.is_error:
                raise EndpointError(f"{self.endpoint}: HTTP {response.status_code}: {response.text[:500]}")
            try:
                return response.json()
            except ValueError:
                raise EndpointError(f"{self.endpoint}: the response is not JSON: {response.text[:300]}") from None
        raise EndpointUnavailableError(f"{self.endpoint}: no answer after {attempts} attempt{'s' * (attempts > 1)}; "
                                       f"last error: {last_error}")


def _first_top_logprobs(choice: dict, endpoint: str) -> dict[str, float]:
    try:
        return dict(choice["logprobs"]["top_logprobs"][0])
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint}: a choice has no logprobs.top_logprobs; does the server support "
                            f"`logprobs` on /v1/completions? Got {str(choice)[:300]}") from None


def _label_logprob(top: dict[str, float], option: str) -> float:
    """log of the total probability of the tokens that spell the label (e.g. "A" and " A")."""
    matches = [logprob for token, logprob in top.items() if token.strip() == option]
    return math.log(sum(math.exp(lp) for lp in matches)) if matches else -math.inf
