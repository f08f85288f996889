"""Rounds of fresh feedback (`alignflow iterate`): each round's folder, its plan, its pairs and its labels.

    <feedback_dir>/round-<k>/round.json    the plan, written once: the model the round starts from and its
                                           fresh prompts (none asked in an earlier round)
                             export/       the champion's two sampled answers per prompt (`feedback export`)
                             labels.jsonl  the labels: a person's (our page; or labelstudio-export.json /
                                           argilla-export.jsonl from those tools), or the reward model's,
                                           the CAI feedback model's or the simulated annotator's
                             data/         the round's DVC data version: the datasets, with every labelled pair
                                           of rounds 1..k in preferences_train
                             reward-data/  with PPO or RLOO: the retrained reward model's data, the original
                                           comparisons plus those pairs, less a held-out share of round k's

A rerun finds each file and goes on from there, so a round waiting for people resumes once their labels are in
the folder, and a finished round is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path

from models.prompting import Prompt, prompt_formatter
from models.reward import reward_scores
from tasks.core.config import IterateSection, PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.core.hashing import md5_file
from tasks.data.conversations import prompt_key, response_text
from tasks.data.publishing import dvc_add, publish
from tasks.data.readers import read_records
from tasks.data.writers import write_jsonl, write_text
from tasks.feedback.export import (
    EXPORT_MANIFEST,
    Sampling,
    build_pairs,
    export_pairs,
    sample_answers,
    write_export,
)
from tasks.feedback.importing import FEEDBACK_MANIFEST
from tasks.feedback.prompts import sample_prompts
from tasks.feedback.records import PAIRS_FILE, Label, LabelLog, prompt_text, read_pairs
from tasks.feedback.simulated import request_kinds, simulated_label
from tasks.registry.logged_models import load_stage_reward_model
from tasks.run.contract import StageResult

ROUND_FILE = "round.json"
REWARD_DATA, REWARD_MANIFEST = "reward-data", "reward_data_manifest.json"
CANDIDATE_FILE = "candidate.json"  # the model a round trained (its first optimizer's), for `start_from: previous`
LABEL_FILES = ("labels.jsonl", "labelstudio-export.json", "argilla-export.jsonl")


def round_settings(cfg: PipelineConfig) -> IterateSection:
    """`cfg.iterate` with its defaults resolved: the feedback folder and the prompt pool."""
    settings = cfg.iterate
    return settings.model_copy(update={
        "feedback_dir": settings.feedback_dir or Path("feedback") / cfg.name,
        "prompts_file": settings.prompts_file or cfg.data.path("preferences_train")})


def round_dir(settings: IterateSection, k: int) -> Path:
    return settings.feedback_dir / f"round-{k}"


def plan_round(settings: IterateSection, k: int, start: StageResult) -> tuple[StageResult, list[Prompt]]:
    """The round's starting model and fresh prompts, fixed the first time the round runs. The model is `start`
    (the champion, or the SFT model), or with `start_from: previous` the candidate the last round trained."""
    path = round_dir(settings, k) / ROUND_FILE
    if path.is_file():
        plan = json.loads(path.read_text())
        return StageResult.model_validate(plan["start"]), plan["prompts"]
    if settings.start_from == "previous" and k > 1:
        start = StageResult.model_validate(json.loads((round_dir(settings, k - 1) / CANDIDATE_FILE).read_text()))
    asked = [p for j in range(1, k) for p in json.loads((round_dir(settings, j) / ROUND_FILE).read_text())["prompts"]]
    n = settings.first_round_pairs if k == 1 and settings.first_round_pairs else settings.pairs_per_round
    prompts = sample_prompts(settings.prompts_file, n, settings.seed + k, exclude=asked)
    if not prompts:
        raise AlignflowError(f"{settings.prompts_file}: no prompt left that rounds 1-{k - 1} did not ask; give "
                             "--prompts a larger file")
    plan = {"round": k, "start": start.model_dump(), "prompts": prompts, "seed": settings.seed + k}
    write_text(path, json.dumps(plan, indent=2, ensure_ascii=False) + "\n")
    return start, prompts


def export_round(cfg: PipelineConfig, settings: IterateSection, k: int, start: StageResult, prompts: list[Prompt],
                 reward: StageResult | None = None) -> tuple[Path, bool]:
    """The round's pairs (kept from an earlier attempt): two samples of the starting model per prompt; with
    `samples_per_prompt` > 2 and a `reward` model, the best- and the worst-scored of that many samples (the
    best-of-n/worst-of-n pairs of iterative DPO: the SFT policy rarely samples a refusal, so two samples seldom
    differ in what matters). Returns (pairs file, whether they were made now)."""
    folder = round_dir(settings, k) / "export"
    if (folder / EXPORT_MANIFEST).is_file():
        return folder / PAIRS_FILE, False
    sampling = Sampling(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                        seed=settings.seed + k)
    scratch = cfg.work_dir / "feedback-rounds" / f"round-{k}"
    n = settings.samples_per_prompt
    best_of_n = n > 2 and reward is not None
    if best_of_n:
        drawn = sample_answers(cfg, start.model_uri, prompts, sampling, samples=n, download_dir=scratch / "model")
        scores = _scorer(cfg, reward, scratch)([p for p, answers in zip(prompts, drawn, strict=True)
                                                for _ in answers], [a for answers in drawn for a in answers])
        ends = [_best_and_worst(scores[i * n:(i + 1) * n], drawn[i]) for i in range(len(prompts))]
        pairs = build_pairs(prompts, [d[best] for d, (best, _) in zip(drawn, ends, strict=True)],
                            [d[worst] for d, (_, worst) in zip(drawn, ends, strict=True)],
                            source_first=f"{start.model_uri}#best-of-{n}",
                            source_second=f"{start.model_uri}#worst-of-{n}", seed=sampling.seed)
    else:
        pairs = export_pairs(cfg, prompts, model_uri=start.model_uri, against_uri=None, sampling=sampling,
                             download_dir=scratch)
    write_export(pairs, folder, {"round": k, "model_uri": start.model_uri, "prompts": len(prompts),
                                 "samples_per_prompt": n if best_of_n else 2,
                                 "seed": sampling.seed, "temperature": sampling.temperature,
                                 "max_new_tokens": sampling.max_new_tokens,
                                 "dropped_identical_or_empty": len(prompts) - len(pairs)})
    return folder / PAIRS_FILE, True


def _best_and_worst(scores: list[float], answers: list[str]) -> tuple[int, int]:
    """Indices of the best- and worst-scored non-empty answers (the same index when fewer than two)."""
    order = sorted((i for i in range(len(scores)) if answers[i].strip()), key=scores.__getitem__) or [0]
    return order[-1], order[0]


def _scorer(cfg: PipelineConfig, reward: StageResult, scratch: Path):
    """(prompts, answers) -> reward scores, with the reward model loaded once; prompts are shown to it in the
    model's prompt format, as in training and evaluation."""
    model, tokenizer = load_stage_reward_model(cfg, reward.model_uri, scratch / "reward", dtype="float32")
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    return lambda prompts, answers: reward_scores(model, tokenizer, [format_prompt(p) for p in prompts], answers,
                                                  batch_size=cfg.eval.score_batch_size).tolist()


def record_candidate(settings: IterateSection, k: int, candidate: StageResult) -> None:
    write_text(round_dir(settings, k) / CANDIDATE_FILE, candidate.model_dump_json(indent=2) + "\n")


def labels_file(settings: IterateSection, k: int) -> Path | None:
    """The labels people (or a labeler) left in the round's folder, if any."""
    found = [round_dir(settings, k) / name for name in LABEL_FILES if (round_dir(settings, k) / name).is_file()]
    if len(found) > 1:
        raise AlignflowError(f"{round_dir(settings, k)}: several label files ({', '.join(p.name for p in found)}); "
                             "keep one")
    return found[0] if found else None


def label_with_reward_model(cfg: PipelineConfig, settings: IterateSection, k: int, pairs_file: Path,
                            reward: StageResult) -> Path:
    """The reward model labels each pair (recorded as its annotator): the higher-scored answer, a tie within
    `reward_margin`."""
    pairs = list(read_pairs(pairs_file).values())
    score = _scorer(cfg, reward, cfg.work_dir / "feedback-rounds" / f"round-{k}")
    prompts = [p.prompt for p in pairs]
    score_a, score_b = score(prompts, [p.answer_a for p in pairs]), score(prompts, [p.answer_b for p in pairs])
    return _write_labels(settings, k, (
        Label(pair_id=pair.pair_id, choice=_reward_choice(a - b, settings.reward_margin),
              annotator=f"reward-model:{reward.model_uri}", note=f"reward A {a:.3f}, B {b:.3f}")
        for pair, a, b in zip(pairs, score_a, score_b, strict=True)))


def label_with_ai(cfg: PipelineConfig, settings: IterateSection, k: int, pairs_file: Path,
                  policy_uri: str) -> Path:
    """The CAI feedback model labels each pair under a drawn principle, asked in both orders (`tasks.cai.rlaif`):
    calibrated against its position bias by averaging the two orders' log-odds; a pair whose calibrated
    P(chosen) is below `rlaif.min_confidence` is a tie. The feedback model is `feedback.model_uri` of
    the CAI config, or the round's starting policy."""
    from tasks.cai.backends import open_backend
    from tasks.cai.config import load_cai_config, load_constitution
    from tasks.cai.progress import ProgressLog
    from tasks.cai.prompts import load_templates
    from tasks.cai.rlaif import judge, label_pairs

    cai = load_cai_config(settings.cai_config, [])
    pairs = list(read_pairs(pairs_file).values())
    scratch = cfg.work_dir / "feedback-rounds" / f"round-{k}"
    backend = open_backend(cai.feedback, model_uri=cai.feedback.model_uri or policy_uri, pipeline=cfg, stop=cai.stop,
                           download_dir=scratch / "feedback-model")
    # Keyed by the pairs and the CAI settings: a resumed labelling reuses only answers to the very same question.
    key = hashlib.sha256(f"{md5_file(pairs_file)}:{cai.section_hash()}:{policy_uri}".encode()).hexdigest()[:16]
    answers = ProgressLog(scratch / f"ai-labels-{key}.jsonl", key=lambda record: record["id"])
    try:
        label_pairs(backend, [(p.pair_id, prompt_text(p.prompt), p.answer_a, p.answer_b) for p in pairs], answers,
                    constitution=load_constitution(cai.constitution), template=load_templates(cai.templates)["choice"],
                    options=cai.rlaif.options, seed=cai.seed + k, chunk=cai.feedback.batch_size)
    finally:
        backend.close()

    def calibrated(pair) -> Label:
        answer = answers[pair.pair_id]
        p_a, bias, reason = judge(answer["p_first"], answer["p_second"], cai.rlaif.min_confidence)
        return Label(pair_id=pair.pair_id, choice="tie" if reason else "A" if p_a > 0.5 else "B",
                     annotator=f"ai:{backend.identity}",
                     note=f"P(A) {p_a:.6f} (orders {answer['p_first']:.3f}, {answer['p_second']:.3f}), position "
                          f"bias {bias:+.2f} log-odds, principle {answer['principle']}"
                          + (f"; {reason}" if reason else ""))

    return _write_labels(settings, k, (calibrated(pair) for pair in pairs))


def label_with_simulation(settings: IterateSection, k: int, pairs_file: Path) -> Path:
    """The simulated annotator labels each pair (`tasks.feedback.simulated`), from the request kinds of the
    prompt pool; its noise is drawn per pair from the round's seed."""
    kinds = request_kinds(settings.prompts_file)
    labels = []
    for pair in read_pairs(pairs_file).values():
        kind = kinds.get(prompt_key(pair.prompt))
        if kind is None:
            raise AlignflowError(f"{pairs_file}: pair {pair.pair_id}: its prompt is not in {settings.prompts_file}, "
                                 "so the simulated annotator does not know its kind")
        labels.append(simulated_label(pair, kind, noise=settings.label_noise, seed=settings.seed + k))
    return _write_labels(settings, k, labels)


def _write_labels(settings: IterateSection, k: int, labels: Iterable[Label]) -> Path:
    """A labeler's labels as the round's labels file, written aside first: a crash never leaves a labels file
    the next run would trust."""
    out = round_dir(settings, k) / LABEL_FILES[0]
    partial = out.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    log = LabelLog(partial)
    for label in labels:
        log.append(label)
    partial.replace(out)
    return out


def _reward_choice(difference: float, margin: float) -> str:
    if difference > margin:
        return "A"
    if difference < -margin:
        return "B"
    return "tie"


def reward_data(cfg: PipelineConfig, settings: IterateSection, k: int, round_data: Path) -> tuple[Path, list[dict]]:
    """`round-k/reward-data`, written once: the round's data, its preferences_train the pipeline's own comparisons
    plus every labelled pair of rounds 1..k, less `reward_holdout` of round k's fresh pairs (drawn from the round's
    seed). Returns the folder and the held-out pairs, on which the reward models before and after are scored."""
    folder = round_dir(settings, k) / REWARD_DATA
    if (folder / REWARD_MANIFEST).is_file():
        return folder, json.loads((folder / REWARD_MANIFEST).read_text())["held_out"]
    name = cfg.data.preferences_train
    rounds_so_far = [record for _, record in read_records(round_data / name)]
    earlier = json.loads((round_data / FEEDBACK_MANIFEST).read_text())["existing_pairs"]
    fresh = rounds_so_far[earlier:]
    held = set(random.Random(settings.seed + k).sample(range(len(fresh)), round(settings.reward_holdout * len(fresh))))
    original = [record for _, record in read_records(cfg.data.path("preferences_train"))]
    train = [*original, *rounds_so_far[:earlier], *(row for i, row in enumerate(fresh) if i not in held)]
    manifest = {"round": k, "original_pairs": len(original), "round_pairs": len(rounds_so_far) - len(held),
                "held_out": [fresh[i] for i in sorted(held)], "round_data": str(round_data)}
    with tempfile.TemporaryDirectory(prefix="alignflow-reward-data-") as staging:
        files = {path.name: path for path in round_data.glob("*.jsonl")}
        files[name] = write_jsonl(train, Path(staging) / name)
        publish(files, folder, REWARD_MANIFEST, "reward data")
    write_text(folder / REWARD_MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if settings.dvc:
        dvc_add(folder)
    return folder, manifest["held_out"]


def reward_accuracy(cfg: PipelineConfig, reward: StageResult, pairs: list[dict], scratch: Path) -> float:
    """The share of `pairs` whose chosen answer the reward model scores above the rejected one."""
    score = _scorer(cfg, reward, scratch)
    prompts = [pair["prompt"] for pair in pairs]
    chosen = score(prompts, [response_text(pair["chosen"]) for pair in pairs])
    rejected = score(prompts, [response_text(pair["rejected"]) for pair in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def imported_data(settings: IterateSection, k: int) -> Path | None:
    """The round's data version, once its import finished (manifest written, and `dvc add` done)."""
    folder = round_dir(settings, k) / "data"
    versioned = not settings.dvc or folder.with_name("data.dvc").is_file()
    return folder if (folder / FEEDBACK_MANIFEST).is_file() and versioned else None
