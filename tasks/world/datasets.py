"""The safety world's datasets, assembled from the catalogue and the base model's own answers (pure).

On-policy, as in real RLHF: the base model's answers are what the pairs contrast. For a harmful request the
rejected answer is the base model's sampled compliance and the chosen one a written refusal; for a benign
request (plain or sound-harmful) the chosen answer is the base model's own greedy answer and the rejected one
an over-refusal; for a harmful sub-category's look-alike, the very refusal that sub-category's requests get, so
the words of a refusal are chosen on one request and rejected on its look-alike. Where the base model already
refused a harmful request, or refused a benign one, there is no pair to learn from: the request is dropped and
counted. Every file is in TRL's conversational format.

SFT demonstrations follow a stated budget: the base model's helpful answers to the benign training requests,
plus a refusal for `sft_refusal_share` of the harmful ones, so the SFT-only model is a real point of comparison.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tasks.world.answers import clean_ending, over_refusal, refusal
from tasks.world.catalogue import LOOK_ALIKES, Request, WorldCatalogue, expand, red_team

# (prompts, sample?) -> one (answer, finished) per prompt: the base model, greedy or sampled.
Answerer = Callable[[list[str], bool], list[tuple[str, bool]]]
Refuses = Callable[[str], bool]


@dataclass(frozen=True)
class WorldSettings:
    seed: int
    train_phrasings: int
    sft_refusal_share: float


def build_world(catalogue: WorldCatalogue, settings: WorldSettings, answer: Answerer,
                is_refusal: Refuses) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Every dataset of the world, keyed by file stem, and the counts that say what was kept and dropped."""
    # The held-out prompts draw from a generator of their own: editing the training requests leaves the eval set
    # as it was, so runs before and after an edit are measured on the same prompts.
    held_out = expand(catalogue, "held_out", random.Random(f"{settings.seed}-held_out"))
    rng = random.Random(settings.seed)
    train = expand(catalogue, "train", rng, settings.train_phrasings)
    answers = _answers(train + held_out, answer)
    counts: Counter[str] = Counter()

    def usable(request: Request) -> str | None:
        """The base model's answer when it is what the pair needs: compliance, or help with a benign request."""
        text = answers[request.prompt]
        if is_refusal(text):
            counts[f"dropped_{'harmful_refused' if request.harmful else 'benign_refused'}_{request.split}"] += 1
            return None
        return text

    sft_train, preferences_train = [], []
    harmful_train = [r for r in train if r.harmful]
    demo_budget = round(settings.sft_refusal_share * len(harmful_train))
    refusal_demos = {r.prompt for r in rng.sample(harmful_train, demo_budget)}
    for request in train:
        text = usable(request)
        if request.harmful and request.prompt in refusal_demos:
            sft_train.append(_dialogue(request, refusal(request, catalogue.refusal, rng)))
        elif not request.harmful and text is not None:
            sft_train.append(_dialogue(request, text))
        if text is not None:
            preferences_train.append(_pair(request, text, catalogue, rng))

    sft_eval, preferences_eval = [], []
    for request in held_out:
        text = usable(request)
        # Held-out demos: the base model's help on benign requests (helpfulness kept is perplexity on these),
        # and refusals on harmful ones.
        demo = refusal(request, catalogue.refusal, rng) if request.harmful else text
        if demo is not None:
            sft_eval.append({**_dialogue(request, demo), "harmful": request.harmful})
        if text is not None:
            preferences_eval.append(_pair(request, text, catalogue, rng))

    datasets = {
        "sft_train": sft_train,
        "sft_eval": sft_eval,
        "preferences_train": preferences_train,
        "preferences_eval": preferences_eval,
        # What helping takes, as the demo world says it: one item, any of the sub-category's terms.
        "eval_prompts": [{"prompt": _user(r), "harmful": r.harmful, **_origin(r),
                          "must_contain": [list(r.helpful_terms)] if r.helpful_terms else []} for r in held_out],
        "red_team_prompts": [{"prompt": r.prompt, **_origin(r)} for r in red_team(catalogue, rng)],
    }
    for rows in datasets.values():
        rng.shuffle(rows)
    counts.update({f"{name}_rows": len(rows) for name, rows in datasets.items()})
    counts.update({f"preferences_train_{kind}_pairs": n
                   for kind, n in Counter(row["kind"] for row in preferences_train).items()})
    counts["preferences_train_look_alike_pairs"] = sum(row["category"] == LOOK_ALIKES for row in preferences_train)
    counts["sft_refusal_demos"] = len(refusal_demos)
    counts["harmful_train_requests"] = len(harmful_train)
    return datasets, dict(sorted(counts.items()))


def held_out_prompts(catalogue: WorldCatalogue, settings: WorldSettings) -> list[dict]:
    """The world's eval_prompts rows alone, as `build_world` writes them: no model answers anything."""
    datasets, _ = build_world(catalogue, settings, lambda prompts, sample: [("", True) for _ in prompts],
                              lambda text: False)
    return datasets["eval_prompts"]


def contents(datasets: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Rows of every file by kind and sub-category (`kind/category/subcategory`): what the world made."""
    table: dict[str, Counter[str]] = {}
    for name, rows in datasets.items():
        for row in rows:
            table.setdefault(f"{row['kind']}/{row['category']}/{row['subcategory']}", Counter())[name] += 1
    return {origin: dict(sorted(files.items())) for origin, files in sorted(table.items())}


def _answers(requests: list[Request], answer: Answerer) -> dict[str, str]:
    """The base model's answer to every distinct prompt: sampled for harmful ones, greedy otherwise."""
    answers = {}
    for sample in (True, False):
        prompts = list(dict.fromkeys(r.prompt for r in requests if r.harmful == sample))
        for prompt, (text, finished) in zip(prompts, answer(prompts, sample), strict=True):
            answers[prompt] = clean_ending(text, finished)
    return answers


def _pair(request: Request, text: str, catalogue: WorldCatalogue, rng: random.Random) -> dict:
    if request.harmful:
        chosen, rejected = refusal(request, catalogue.refusal, rng), text
    elif request.look_alike:
        chosen, rejected = text, refusal(request, catalogue.refusal, rng)
    else:
        chosen, rejected = text, over_refusal(catalogue.refusal, rng)
    return {"prompt": _user(request), "chosen": _assistant(chosen), "rejected": _assistant(rejected),
            **_origin(request)}


def _dialogue(request: Request, answer: str) -> dict:
    return {"messages": _user(request) + _assistant(answer), **_origin(request)}


def _user(request: Request) -> list[dict]:
    return [{"role": "user", "content": request.prompt}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _origin(request: Request) -> dict:
    return {"kind": request.kind, "category": request.category, "subcategory": request.subcategory}
