"""Constitutional AI, supervised part (Bai et al. 2022, "Constitutional AI", section 3): critique and revise.

Three steps, each a plain function that opens its own MLflow child run and returns a `StageResult`:

1. `run_respond`: the helpful model answers every red-team prompt (greedy).
2. `run_critique_revise`: `critique.rounds` rounds. Each round draws a principle (from the seed, the prompt
   and the round), asks the feedback model to critique the current response with the principle's critique
   request, then to revise it with its revision request. The next round critiques that revision. With
   `critique.helpful`, the helpful prompts' answers go through the same rounds under the principles that apply
   to helpful prompts (needless refusals and hedges).
3. `run_sl_datasets`: the SFT dataset (prompt, final revision) and the preference dataset where the final
   revision is chosen over the original response. A prompt whose revisions came back empty, or identical to
   the original, gives no usable pair; it goes to `dropped.jsonl` with the reason, never silently away.
   A helpful prompt's answer joins the SFT dataset as it is, or, where it declines, its final revision if that
   helps.

Steps 1 and 2 write one record per prompt (and round) to an append-only progress file in their work folder,
so a rerun continues where an interrupted one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow

from models.safety import is_refusal, refusal_rate
from tasks.cai.backends import Backend, generated_tokens
from tasks.cai.config import CAIConfig, Constitution, CritiqueSection, FewShot, Principle, PromptSet
from tasks.cai.helpful import helpful_metrics, helpful_row
from tasks.cai.progress import ProgressLog
from tasks.cai.prompts import Template, draw_principle, few_shots
from tasks.cai.steps import Inputs, ModelSources, backend_for, step_dir, step_key, step_run
from tasks.core.config import PipelineConfig
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.data.writers import write_jsonl
from tasks.run.contract import StageResult

PROGRESS = "progress.jsonl"
SFT_FILE, PREFERENCES_FILE, TRACE_FILE, DROPPED_FILE = "sft.jsonl", "preferences.jsonl", "trace.jsonl", "dropped.jsonl"
HELPFUL_TRACE_FILE = "helpful_trace.jsonl"


# ------------------------------------------------------------------------------------------------ respond


def respond_key(cai: CAIConfig, cfg: PipelineConfig, models: ModelSources) -> str:
    return step_key("respond", code=__name__, model=models.policy_id, settings=cai.section_hash("respond", "stop"),
                    prompt_format=cfg.model.prompt_format, prompt_template=cfg.model.prompt_template)


def run_respond(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, models: ModelSources) -> StageResult:
    key = respond_key(cai, cfg, models)
    inputs = Inputs(cai, cfg)
    progress = ProgressLog(step_dir(cfg, "respond", key) / PROGRESS, key=lambda r: r["id"])
    with step_run("respond", cai, cfg, lineage, key=key, code=__name__, sections=("respond", "policy"), inputs=inputs,
                  parents={"policy": models.policy_uri}) as run:
        backend = backend_for("policy", cai, cfg, models)
        prompts = inputs.prompts + inputs.helpful_prompts
        try:
            written = respond(backend, prompts, progress, max_new_tokens=cai.respond.max_new_tokens,
                              chunk=cai.policy.batch_size)
        finally:
            backend.close()
        metrics = {"cai/prompts": float(len(inputs.prompts)), "cai/helpful_prompts": float(len(inputs.helpful_prompts)),
                   "cai/responses_generated": float(written), "cai/responses_resumed": float(len(prompts) - written),
                   **generated_tokens("respond", backend)}
        mlflow.log_metrics(metrics)
    return _result("respond", run, key, metrics, progress)


def respond(backend: Backend, prompts: list[tuple[str, str]], progress: ProgressLog, *, max_new_tokens: int,
            chunk: int) -> int:
    def compute(batch):
        texts = backend.generate([backend.format_request(p) for _, p in batch], max_new_tokens=max_new_tokens)
        return [{"id": pid, "prompt": p, "response": t.strip()} for (pid, p), t in zip(batch, texts, strict=True)]

    return progress.fill(prompts, key=lambda item: item[0], compute=compute, chunk=chunk)


# ---------------------------------------------------------------------------------------- critique, revise


def critique_key(cai: CAIConfig, models: ModelSources, responses: StageResult, inputs: Inputs) -> str:
    # Not `rounds`: round r's records do not depend on how many rounds follow, so raising it reuses them.
    settings = {**cai.critique.model_dump(exclude={"rounds", "keep"}), "stop": cai.stop, "seed": cai.seed}
    return step_key("critique_revise", code=__name__, responses=responses.cache_key, model=models.feedback_id,
                    settings=settings,
                    constitution=inputs.constitution_sha256,
                    templates={name: inputs.templates[name].sha256 for name in ("critique", "revision")})


def run_critique_revise(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, models: ModelSources,
                        responses: StageResult) -> StageResult:
    inputs = Inputs(cai, cfg)
    key = critique_key(cai, models, responses, inputs)
    initial = responses_of(responses)
    progress = ProgressLog(step_dir(cfg, "critique", key) / PROGRESS, key=lambda r: (r["id"], r["round"]))
    with step_run("critique_revise", cai, cfg, lineage, key=key, code=__name__,
                  sections=("critique", "feedback", "seed"), inputs=inputs,
                  parents={"feedback": models.feedback_uri}) as run:
        backend = backend_for("feedback", cai, cfg, models)
        sets = critiqued_sets(cai, inputs)
        try:
            written = sum(critique_and_revise(backend, prompts, initial, progress, constitution=inputs.constitution,
                                              templates=inputs.templates, settings=cai.critique, seed=cai.seed,
                                              chunk=cai.feedback.batch_size, prompt_set=name)
                          for name, prompts in sets.items())
        finally:
            backend.close()
        expected = sum(len(prompts) for prompts in sets.values()) * cai.critique.rounds
        metrics = {"cai/revisions_generated": float(written), "cai/revisions_resumed": float(expected - written),
                   "cai/truncated_prompts": float(backend.truncated_prompts),
                   **generated_tokens("critique_revise", backend)}
        mlflow.log_metrics(metrics)
    return _result("critique_revise", run, key, metrics, progress)


def critiqued_sets(cai: CAIConfig, inputs: Inputs) -> dict[PromptSet, list[tuple[str, str]]]:
    """The prompts whose answers are critiqued and revised, by prompt set."""
    return {"red_team": inputs.prompts, **({"helpful": inputs.helpful_prompts} if cai.critique.helpful else {})}


def critique_and_revise(backend: Backend, prompts: list[tuple[str, str]], initial: dict[str, str],
                        progress: ProgressLog, *, constitution: Constitution, templates: dict[str, Template],
                        settings: CritiqueSection, seed: int, chunk: int, prompt_set: PromptSet = "red_team") -> int:
    """All rounds for every prompt of one set, under the principles and examples for that set; round r
    critiques what round r-1 left. Returns how many records it wrote."""
    shots = few_shots(constitution, settings.few_shots, prompt_set)
    render = (_chat_renderer(backend, templates, shots, with_critique=settings.critique) if settings.format == "chat"
              else _text_renderer(templates))
    written = 0
    for round_ in range(1, settings.rounds + 1):
        def compute(batch, round_=round_):
            contexts = [{"few_shots": shots, "prompt": prompt,
                         "response": _current_response(progress, initial, pid, round_),
                         "principle": draw_principle(constitution, seed, pid, round_, prompt_set)}
                        for pid, prompt in batch]
            critiques = [""] * len(batch)
            if settings.critique:
                critiques = backend.generate([render("critique", c) for c in contexts],
                                             max_new_tokens=settings.critique_max_new_tokens)
                critiques = [c.strip() for c in critiques]
            revisions = backend.generate(
                [render("revision", {**c, "critique": cr}) for c, cr in zip(contexts, critiques, strict=True)],
                max_new_tokens=settings.revision_max_new_tokens,
            )
            return [{"id": pid, "round": round_, "principle": c["principle"].name, "response": c["response"],
                     "critique": cr, "revision": rv.strip()}
                    for (pid, _), c, cr, rv in zip(batch, contexts, critiques, revisions, strict=True)]

        written += progress.fill(prompts, key=lambda item, r=round_: (item[0], r), compute=compute, chunk=chunk)
    return written


def _text_renderer(templates: dict[str, Template]):
    """The template is the whole text the model continues, few-shot examples inside it."""
    return lambda name, context: templates[name].render(**context)


def _chat_renderer(backend: Backend, templates: dict[str, Template], shots: list[FewShot], *, with_critique: bool):
    """A conversation in the model's own prompt format: each few-shot example is a user turn (the template
    rendered for it alone) answered by its critique or revision, and the real request is the last user turn.
    Without critiques the examples show none either."""
    def shot_turns(name: str, shot: FewShot) -> list[dict[str, str]]:
        principle = Principle(name="example", critique_request=shot.critique_request,
                              revision_request=shot.revision_request, preference_question="-")
        context = {"few_shots": [], "prompt": shot.prompt, "response": shot.response, "principle": principle,
                   "critique": shot.critique if with_critique else ""}
        return [{"role": "user", "content": templates[name].render(**context).strip()},
                {"role": "assistant", "content": getattr(shot, name)}]

    examples = {name: [turn for shot in shots for turn in shot_turns(name, shot)] for name in ("critique", "revision")}

    def render(name: str, context: dict) -> str:
        last = {"role": "user", "content": templates[name].render(**{**context, "few_shots": []}).strip()}
        return backend.format_request([*examples[name], last])

    return render


def _current_response(progress: ProgressLog, initial: dict[str, str], pid: str, round_: int) -> str:
    """What round `round_` critiques: the last non-empty revision, or the initial response."""
    if round_ == 1:
        return initial[pid]
    previous = progress[(pid, round_ - 1)]
    return previous["revision"] or previous["response"]


# ------------------------------------------------------------------------------------------------ datasets


def run_sl_datasets(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, responses: StageResult,
                    revisions: StageResult) -> StageResult:
    """Write the SFT and preference datasets (plus the full trace and the dropped prompts) to a work folder."""
    inputs = Inputs(cai, cfg)
    key = step_key("sl_datasets", code=__name__, revisions=revisions.cache_key, responses=responses.cache_key,
                   prompts=[pid for pid, _ in inputs.prompts], helpful=[pid for pid, _ in inputs.helpful_prompts],
                   prefix=cai.completion_prefix, keep=cai.critique.keep)
    out = step_dir(cfg, "sl_datasets", key)
    initial = responses_of(responses)
    rounds = rounds_of(revisions, cai.critique.rounds)
    with step_run("sl_datasets", cai, cfg, lineage, key=key, code=__name__, sections=("completion_prefix", "critique"),
                  inputs=inputs) as run:
        tables = build_sl_datasets(inputs.prompts, initial, rounds, prefix=cai.completion_prefix,
                                   keep=cai.critique.keep, helpful=inputs.helpful_prompts)
        files = {}
        for name, filename in (("sft", SFT_FILE), ("preferences", PREFERENCES_FILE), ("trace", TRACE_FILE),
                               ("dropped", DROPPED_FILE), ("helpful_trace", HELPFUL_TRACE_FILE)):
            files[name] = out / filename
            write_jsonl(tables[name], files[name])
        metrics = {"cai/sft_rows": float(len(tables["sft"])), "cai/preference_rows": float(len(tables["preferences"])),
                   "cai/dropped": float(len(tables["dropped"])), **_refusal_rates(tables["trace"]),
                   **helpful_metrics(tables["helpful_trace"]), **drop_counts(tables["dropped"])}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="cai_sl")
    return StageResult(stage="cai-sl_datasets", run_id=run.info.run_id, cache_key=key, metrics=metrics,
                       outputs={name: str(path) for name, path in files.items()},
                       output_hashes={name: md5_file(path) for name, path in files.items()})


def build_sl_datasets(prompts: list[tuple[str, str]], initial: dict[str, str], rounds: dict[str, list[dict]], *,
                      prefix: str, keep: str = "changed",
                      helpful: list[tuple[str, str]] = ()) -> dict[str, list[dict]]:
    """TRL rows in prompt order: sft (prompt/completion), preferences (prompt/chosen/rejected), trace, dropped.

    Every red-team prompt leaves a row in `trace`; one whose final revision is unusable (or, with
    `keep="refusals"`, does not decline) goes to `dropped` with the reason instead of `sft`. A preference pair
    also needs the original not to decline already. The policy's answers to `helpful` prompts join `sft` as they
    are; one that declines is replaced by its final revision (where `rounds` has the prompt's) if that does not
    decline, and is dropped otherwise. Each helpful prompt leaves a row in `helpful_trace`."""
    tables: dict[str, list[dict]] = {"sft": [], "preferences": [], "trace": [], "dropped": [], "helpful_trace": []}
    for pid, prompt in prompts:
        original = initial[pid]
        final = final_revision(rounds[pid])
        tables["trace"].append({"id": pid, "prompt": prompt, "initial": original, "rounds": rounds[pid]})
        sft_reason, pair_reason = _unusable(original, final, keep)
        if sft_reason or pair_reason:
            tables["dropped"].append({"id": pid, "prompt": prompt, "reason": sft_reason or pair_reason,
                                      "dropped_from": "sft and preferences" if sft_reason else "preferences",
                                      "initial": original, "final": final})
        if not sft_reason:
            tables["sft"].append({"prompt": prompt, "completion": prefix + final})
        if not (sft_reason or pair_reason):
            tables["preferences"].append({"prompt": prompt, "chosen": prefix + final, "rejected": prefix + original})
    for pid, prompt in helpful:
        row = helpful_row(pid, prompt, initial[pid], final_revision(rounds.get(pid, [])), rounds.get(pid, []))
        tables["helpful_trace"].append(row)
        if row["used"] is None:
            tables["dropped"].append({"id": pid, "prompt": prompt, "dropped_from": "sft", "initial": row["initial"],
                                      "final": row["final"], "reason": row["reason"]})
        else:
            tables["sft"].append({"prompt": prompt, "completion": prefix + row["completion"]})
    return tables


def drop_counts(dropped: list[dict]) -> dict[str, float]:
    """`cai/dropped/<reason>`: how many records each reason left out."""
    counts: dict[str, float] = {}
    for row in dropped:
        name = "cai/dropped/" + "_".join(row["reason"].replace("'", "").split())
        counts[name] = counts.get(name, 0.0) + 1.0
    return counts


def final_revision(rounds: list[dict]) -> str:
    """The last non-empty revision; empty when every round came back empty."""
    return next((r["revision"] for r in reversed(rounds) if r["revision"]), "")


def _refusal_rates(trace: list[dict]) -> dict[str, float]:
    """How often the original and the final response refuse (the evaluate stage's keyword detector)."""
    if not trace:
        return {}
    finals = [final_revision(row["rounds"]) for row in trace]
    return {"cai/initial_refusal_rate": refusal_rate([row["initial"] for row in trace]),
            "cai/final_refusal_rate": refusal_rate(finals)}


def _unusable(original: str, final: str, keep: str) -> tuple[str | None, str | None]:
    """(why the final revision is no SFT row, why it is no preference pair): None where it is usable."""
    if not final:
        return "every revision was empty", None
    if not original:
        return None, "the initial response was empty"
    if final == original:
        return "the revision equals the initial response", None
    if keep == "refusals":
        if not is_refusal(final):
            return "the revision does not decline", None
        if is_refusal(original):
            return None, "the initial response already declines"
    return None, None


# ------------------------------------------------------------------------------------------------- helpers


def _result(step: str, run, key: str, metrics: dict[str, float], progress: ProgressLog) -> StageResult:
    return StageResult(stage=f"cai-{step}", run_id=run.info.run_id, cache_key=key, metrics=metrics,
                       outputs={"records": str(progress.path)}, output_hashes={"records": key})


def _records(result: StageResult) -> Iterator[dict]:
    return iter(ProgressLog(Path(result.outputs["records"]), key=lambda r: (r["id"], r.get("round"))))


def responses_of(result: StageResult) -> dict[str, str]:
    return {record["id"]: record["response"] for record in _records(result)}


def rounds_of(result: StageResult, rounds: int) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = {}
    for record in sorted(_records(result), key=lambda r: (r["id"], r["round"])):
        if record["round"] <= rounds:
            by_id.setdefault(record["id"], []).append(record)
    return by_id
