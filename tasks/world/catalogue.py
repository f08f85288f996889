"""The real-language safety world's catalogue (`configs/worlds/safety.yaml`), read and expanded into requests.

The YAML names kinds (harmful, benign, sound_harmful) -> categories -> `train` / `held_out` sub-categories,
each with its requests (and, when harmful, the reason a refusal gives, a safe alternative and benign look-alikes).
Expanding it puts each request in a phrasing drawn for its split, so held-out prompts differ from training ones in
both sub-category and wording. Everything is a pure function of the file and the seed.

Look-alikes are contrast data (WildJailbreak, XSTest): benign requests in a harmful sub-category's own trigger words
("How do I check my own rental for hidden cameras?"). They expand as sound-harmful requests of the category
`look_alikes`, one sub-category per harmful one, carrying its refusal reason: the refusal they must not get.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tasks.core.config_files import Section, load_config_file, resolved_sha256
from tasks.core.request_kinds import REQUEST_KINDS

Kind = Literal["harmful", "benign", "sound_harmful"]
KINDS: tuple[Kind, ...] = REQUEST_KINDS  # the data contract's, in one place
Split = Literal["train", "held_out"]
LOOK_ALIKES = "look_alikes"  # the sound-harmful category every harmful sub-category's look-alikes expand into


class LookAlikes(Section):
    requests: list[str] = Field(min_length=1, description="Benign requests in the harmful sub-category's words.")
    helpful_terms: list[str] = Field(
        default_factory=list, description="What a helpful answer to them names (required on held-out ones).")


class SubCategory(Section):
    requests: list[str] = Field(min_length=1, description="Requests, each a natural sentence.")
    reason: str | None = Field(None, description="Harmful only: why a refusal declines, one clause.")
    alternative: str | None = Field(None, description="Harmful only: a safe alternative a refusal may offer.")
    helpful_terms: list[str] = Field(
        default_factory=list,
        description="Benign and sound-harmful: what a helpful answer names, one of these at least (the evaluation "
                    "judge's helpfulness; a term the request itself uses does not count).")
    look_alikes: LookAlikes | None = Field(
        None, description="Harmful only: benign requests sharing its trigger words, which deserve help.")


class Category(Section):
    train: dict[str, SubCategory] = Field(min_length=1, description="Sub-categories training may use.")
    held_out: dict[str, SubCategory] = Field(min_length=1, description="Sub-categories only evaluation uses.")


class Phrasings(Section):
    train: list[str] = Field(min_length=1, description="Wordings of training prompts ({request}, {lower}).")
    held_out: list[str] = Field(min_length=1, description="Wordings of held-out prompts, none shared with train.")
    red_team: list[str] = Field(min_length=1, description="Adversarial wordings for the red-team prompts.")

    @model_validator(mode="after")
    def _disjoint(self) -> Phrasings:
        shared = set(self.train) & set(self.held_out)  # the bare "{request}" too: it is a wording like any other
        if shared:
            raise ValueError(f"phrasings {sorted(shared)} are both train and held_out")
        return self


class Refusals(Section):
    openers: list[str] = Field(min_length=1, description="First sentences of a refusal.")
    over_refusals: list[str] = Field(min_length=1, description="Refusals of benign requests: what helping must beat.")
    over_refusal_reasons: list[str] = Field(
        default_factory=list, description="Reasons an over-refusal gives after an opener, as a true refusal does.")


class WorldCatalogue(Section):
    phrasings: Phrasings
    refusal: Refusals
    harmful: dict[str, Category] = Field(min_length=1)
    benign: dict[str, Category] = Field(min_length=1)
    sound_harmful: dict[str, Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _harmful_have_reasons(self) -> WorldCatalogue:
        for category, sub, entry in _walk(self.harmful):
            if not entry.reason:
                raise ValueError(f"harmful.{category}: sub-category {sub!r} needs a `reason` for its refusals")
            if entry.helpful_terms:
                raise ValueError(f"harmful.{category}: sub-category {sub!r} has `helpful_terms`: nothing to help with")
        return self

    @model_validator(mode="after")
    def _harmful_have_look_alikes(self) -> WorldCatalogue:
        """Every harmful sub-category has benign look-alikes, named after it in one category of sound-harmful."""
        if LOOK_ALIKES in self.sound_harmful:
            raise ValueError(f"sound_harmful.{LOOK_ALIKES}: the name is kept for the harmful sub-categories' "
                             "look-alikes")
        seen: dict[str, str] = {}
        for category, sub, entry in _walk(self.harmful):
            if sub in seen:
                raise ValueError(f"harmful: sub-category {sub!r} is in both {seen[sub]} and {category}; its "
                                 "look-alikes are named after it, so names must be unique")
            seen[sub] = category
            if entry.look_alikes is None:
                raise ValueError(f"harmful.{category}: sub-category {sub!r} needs `look_alikes`, benign requests in "
                                 "its own trigger words, so a model learns the meaning and not the words")
        for kind in ("benign", "sound_harmful"):
            for category, sub, entry in _walk(getattr(self, kind)):
                if entry.look_alikes is not None:
                    raise ValueError(f"{kind}.{category}: sub-category {sub!r} has `look_alikes`: only harmful "
                                     "sub-categories have them")
        return self

    @model_validator(mode="after")
    def _held_out_help_is_judged(self) -> WorldCatalogue:
        for kind in ("benign", "sound_harmful"):
            for category, sub, entry in _entries(self, kind, "held_out"):
                if not entry.helpful_terms:
                    where = (f"harmful: held-out sub-category {sub!r}'s look_alikes" if category == LOOK_ALIKES
                             else f"{kind}.{category}: held-out sub-category {sub!r}")
                    raise ValueError(f"{where} needs `helpful_terms`, what a helpful answer names, for the "
                                     "evaluation's helpful rate")
        return self


@dataclass(frozen=True)
class Request:
    """One prompt of the world, with where it comes from."""

    prompt: str
    kind: Kind
    category: str
    subcategory: str
    split: Split
    reason: str | None = None
    alternative: str | None = None
    helpful_terms: tuple[str, ...] = ()

    @property
    def harmful(self) -> bool:
        return self.kind == "harmful"

    @property
    def look_alike(self) -> bool:
        return self.category == LOOK_ALIKES


def load_catalogue(path: Path) -> WorldCatalogue:
    """Read a world catalogue (following `extends:`) and validate it."""
    return load_config_file(WorldCatalogue, path, what="safety world")


def catalogue_sha256(path: Path) -> str:
    """The catalogue as resolved (`extends:` merged): what the world is built from, whichever file holds it."""
    return resolved_sha256(path, "safety world")


def expand(catalogue: WorldCatalogue, split: Split, rng: random.Random, phrasings_per_request: int = 1,
           ) -> list[Request]:
    """Every request of the split's sub-categories, each in `phrasings_per_request` distinct wordings drawn for
    that split (held-out requests always get one)."""
    wordings = catalogue.phrasings.train if split == "train" else catalogue.phrasings.held_out
    copies = phrasings_per_request if split == "train" else 1
    requests = []
    for kind in KINDS:
        for category, sub, entry in _entries(catalogue, kind, split):
            for text in entry.requests:
                for wording in _distinct(wordings, copies, rng):
                    requests.append(Request(phrase(wording, text), kind, category, sub, split, entry.reason,
                                            entry.alternative, tuple(entry.helpful_terms)))
    return requests


def red_team(catalogue: WorldCatalogue, rng: random.Random) -> list[Request]:
    """Training's harmful requests in adversarial wordings: the Constitutional AI flow's input."""
    return [Request(phrase(rng.choice(catalogue.phrasings.red_team), text), "harmful", category, sub, "train",
                    entry.reason, entry.alternative)
            for category, sub, entry in _walk(catalogue.harmful, "train") for text in entry.requests]


def phrase(wording: str, request: str) -> str:
    return wording.format(request=request, lower=request[:1].lower() + request[1:])


def _distinct(wordings: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` wordings; the same wording twice only when there are fewer than `count`, and never identity twice."""
    pool = list(dict.fromkeys(wordings))
    if count >= len(pool):
        return pool
    return rng.sample(pool, count) if count > 1 else [rng.choice(wordings)]  # one draw keeps the file's weights


def _entries(catalogue: WorldCatalogue, kind: Kind, split: Split):
    """(category, sub-category, entry) of one kind and split; sound-harmful ones include the look-alikes."""
    yield from _walk(getattr(catalogue, kind), split)
    if kind == "sound_harmful":
        for _, sub, harmful in _walk(catalogue.harmful, split):
            if harmful.look_alikes is not None:  # the validator requires them; this runs inside it too
                yield LOOK_ALIKES, sub, SubCategory(requests=harmful.look_alikes.requests,
                                                    helpful_terms=harmful.look_alikes.helpful_terms,
                                                    reason=harmful.reason, alternative=harmful.alternative)


def _walk(categories: dict[str, Category], split: Split | None = None):
    for name, category in categories.items():
        for part in ("train", "held_out") if split is None else (split,):
            for sub, entry in getattr(category, part).items():
                yield name, sub, entry
