"""What a helpful prompt (a benign or sound-harmful request) gives SL-CAI: its answer as the policy gave it, or,
where that declines, its final revision under the needless-refusal principle if that helps; neither, and it is
dropped with the reason. The training side's refusal detector (`models.safety`) decides what declines."""

from __future__ import annotations

from models.safety import is_refusal, refusal_rate


def helpful_row(pid: str, prompt: str, answer: str, revision: str, rounds: list[dict]) -> dict:
    """The prompt's `helpful_trace` row: `used` is "initial", "revision" or None (then `reason` says why);
    `completion` is what joins sft.jsonl. `rounds` is empty when the answer was not critiqued."""
    row = {"id": pid, "prompt": prompt, "initial": answer, "final": revision, "rounds": rounds, "used": None,
           "completion": None, "reason": None}
    if answer and not is_refusal(answer):
        row.update(used="initial", completion=answer)
    elif revision and not is_refusal(revision):
        row.update(used="revision", completion=revision)  # the critique caught a needless refusal; the revision helps
    else:
        said = "the helpful answer is empty" if not answer else "the helpful answer refuses"
        row["reason"] = f"{said} and its revision {'is empty' if not revision else 'declines too'}" if rounds else said
    return row


def helpful_metrics(helpful_trace: list[dict]) -> dict[str, float]:
    """How the critiqued helpful answers fared: declined at first, declined after revision, fixed by revision."""
    revised = [row for row in helpful_trace if row["rounds"]]
    if not revised:
        return {}
    return {"cai/helpful_initial_refusal_rate": refusal_rate([row["initial"] for row in revised]),
            "cai/helpful_final_refusal_rate": refusal_rate([row["final"] for row in revised]),
            "cai/helpful_revisions_used": float(sum(row["used"] == "revision" for row in helpful_trace))}
