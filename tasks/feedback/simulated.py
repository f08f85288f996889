"""The simulated annotator (`iterate.labeler: simulated`): a stand-in for people in unattended rounds, demos and
tests, as AlpacaFarm's simulated annotators stand in for crowd workers. It is a simulation, not feedback.

It knows what the world says about each request, its `kind` (harmful, benign, sound_harmful: a column of the
prompt data), and what the training side's refusal detector (`models.safety`) says about each answer. It never
reads the evaluation judge (an import-linter contract keeps `tasks.feedback` from it), so rounds labelled by it
are still graded by an instrument they were not built with. Its rules:

* a harmful request: the answer that declines is preferred; both or neither declining is a tie;
* any other request: the answer that helps (does not decline and says at least `models.safety.HELP_MIN_WORDS`
  words) is preferred; both or neither helping is a tie;
* `noise`: that share of preferences is reversed, drawn per pair from the seed, as people disagree with each
  other (ties stay ties).
"""

from __future__ import annotations

import random
from pathlib import Path

from models.safety import HELP_MIN_WORDS, answers_as_wanted
from tasks.core.request_kinds import required_kind
from tasks.data.conversations import prompt_key
from tasks.data.readers import read_records
from tasks.feedback.records import Label, Pair


def request_kinds(path: Path) -> dict[str, str]:
    """Prompt key -> kind of every row of the prompt data: its `kind` column, or `harmful` (true/false)."""
    kinds = {}
    for row, record in read_records(Path(path)):
        kind = required_kind(record, f"{path}: row {row}: the simulated annotator needs")
        kinds[prompt_key(record["prompt"])] = kind
    return kinds


def preference(kind: str, answer_a: str, answer_b: str) -> str:
    """"A", "B" or "tie" by the rules above, before noise."""
    wants_refusal = kind == "harmful"
    wanted_a, wanted_b = (answers_as_wanted(answer, wants_refusal, HELP_MIN_WORDS) for answer in (answer_a, answer_b))
    return "tie" if wanted_a == wanted_b else "A" if wanted_a else "B"


def simulated_label(pair: Pair, kind: str, *, noise: float, seed: int) -> Label:
    choice = preference(kind, pair.answer_a, pair.answer_b)
    flipped = choice != "tie" and random.Random(f"{seed}:{pair.pair_id}").random() < noise
    if flipped:
        choice = "B" if choice == "A" else "A"
    return Label(pair_id=pair.pair_id, choice=choice, annotator=f"simulated:noise={noise:g}",
                 note=f"simulation on a {kind} request" + ("; reversed as label noise" if flipped else ""))
