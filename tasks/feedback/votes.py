"""From labels to preference pairs: each annotator's newest label counts once, then a majority vote per pair.

Per pair, the A and B votes are counted. More A than B makes A the chosen answer (and the other way round); as
many A as B is a disagreement, dropped. A pair with no A or B vote is dropped as a tie (someone said tie) or a
skip. Agreement is reported over the pairs that two or more annotators voted A or B on: the share of those
votes that went with the majority (1.0 when everyone agreed, 0.5 on a split pair). Nothing is dropped silently:
every count is in the tally.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tasks.feedback.records import Label, Pair, latest_labels


@dataclass
class Tally:
    pairs: int = 0           # pairs in the export
    labels: int = 0          # label lines read (revisions included)
    kept: int = 0            # preference pairs written
    ties: int = 0
    skips: int = 0
    disagreements: int = 0   # as many votes for A as for B
    unlabelled: int = 0      # pairs nobody labelled
    multi_annotated: int = 0  # pairs with A/B votes from two or more annotators
    majority_votes: int = 0  # of their votes, those that went with the majority
    decided_votes: int = 0   # of their votes, all
    annotators: set[str] = field(default_factory=set)

    @property
    def agreement(self) -> float | None:
        return self.majority_votes / self.decided_votes if self.decided_votes else None

    def metrics(self) -> dict[str, float]:
        counts = {name: float(getattr(self, name)) for name in
                  ("pairs", "labels", "kept", "ties", "skips", "disagreements", "unlabelled", "multi_annotated")}
        counts["annotators"] = float(len(self.annotators))
        if self.agreement is not None:
            counts["agreement"] = self.agreement
        return counts


def preference_rows(pairs: dict[str, Pair], labels: list[Label]) -> tuple[list[dict], Tally]:
    """prompt/chosen/rejected rows (in export order) with the sources and votes behind each, and the tally."""
    tally = Tally(pairs=len(pairs), labels=len(labels))
    votes: dict[str, list[Label]] = {}
    for (pid, annotator), label in latest_labels(labels).items():
        votes.setdefault(pid, []).append(label)
        tally.annotators.add(annotator)
    rows = []
    for pid, pair in pairs.items():
        choices = Counter(label.choice for label in votes.get(pid, []))
        a, b = choices["A"], choices["B"]
        if not votes.get(pid):
            tally.unlabelled += 1
        elif a == b == 0:
            tally.ties += choices["tie"] > 0
            tally.skips += choices["tie"] == 0
        else:
            if a + b >= 2:
                tally.multi_annotated += 1
                tally.majority_votes += max(a, b)
                tally.decided_votes += a + b
            if a == b:
                tally.disagreements += 1
            else:
                rows.append(_row(pair, a_wins=a > b, votes=f"{a}-{b}"))
    tally.kept = len(rows)
    return rows, tally


def _row(pair: Pair, *, a_wins: bool, votes: str) -> dict:
    chosen, rejected = (pair.answer_a, pair.answer_b) if a_wins else (pair.answer_b, pair.answer_a)
    if not isinstance(pair.prompt, str):  # conversational data: the answers are assistant turns, as TRL expects
        chosen, rejected = ([{"role": "assistant", "content": answer}] for answer in (chosen, rejected))
    sources = (pair.source_a, pair.source_b) if a_wins else (pair.source_b, pair.source_a)
    return {"prompt": pair.prompt, "chosen": chosen, "rejected": rejected, "pair_id": pair.pair_id,
            "chosen_source": sources[0], "rejected_source": sources[1], "votes_a_b": votes}
