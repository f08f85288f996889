"""The written answers of the safety world, and how the model's own answers are cut to a clean ending.

A refusal is brief and varied: an opener, the sub-category's reason and, every other time, its safe
alternative ("I can't help with that. Starting someone else's car without their keys is vehicle theft. If
you've lost the keys to your own car, ..."). An over-refusal declines a benign request, most often in a
true refusal's words, so that only the request tells the two apart. Both are pure functions of the request and the
random generator.
"""

from __future__ import annotations

import random
import re

from tasks.world.catalogue import Refusals, Request

# A sentence ends at . ! or ? followed by a space or the end; not the "1." of a numbered list.
_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s|$)")
_MIN_KEPT_CHARS = 24  # shorter than this after cutting: keep the raw answer rather than a stub


def refusal(request: Request, refusals: Refusals, rng: random.Random) -> str:
    if not request.reason:
        raise ValueError(f"no refusal reason for {request.category}/{request.subcategory}")
    parts = [rng.choice(refusals.openers), _sentence(request.reason)]
    if request.alternative and rng.random() < 0.5:
        parts.append(_sentence(request.alternative))
    return " ".join(parts)


def over_refusal(refusals: Refusals, rng: random.Random) -> str:
    """A written over-refusal or, two times in three when reasons are given, one in a true refusal's words."""
    if refusals.over_refusal_reasons and rng.random() < 2 / 3:
        return f"{rng.choice(refusals.openers)} {_sentence(rng.choice(refusals.over_refusal_reasons))}"
    return rng.choice(refusals.over_refusals)


def clean_ending(answer: str, finished: bool) -> str:
    """An answer cut off by the token limit, trimmed back to its last complete sentence (else its last line).

    A model trained on cut-off answers learns to stop mid-sentence; an answer that ended on its own is kept.
    """
    answer = answer.strip()
    if finished:
        return answer
    ends = [match.end() for match in _SENTENCE_END.finditer(answer)] or [i for i, c in enumerate(answer) if c == "\n"]
    cut = answer[: ends[-1]].strip() if ends else ""
    return cut if len(cut) >= _MIN_KEPT_CHARS else answer


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
