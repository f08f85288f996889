"""Constitutional AI for a chat model: few-shot examples as chat turns, revising without a critique, keeping only
revisions that decline (counted), helpfulness samples, prompts from a conversational file, the base model as
policy, and RLAIF labels on original-against-revision pairs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.cai.backends import check_http_formats, generated_tokens
from tasks.cai.config import BackendSection, load_constitution
from tasks.cai.progress import ProgressLog
from tasks.cai.prompts import draw_principle, load_templates
from tasks.cai.rlaif import run_rlaif
from tasks.cai.steps import model_sources, read_prompts
from tasks.cai.supervised import (
    build_sl_datasets,
    critique_and_revise,
    drop_counts,
    run_critique_revise,
    run_respond,
    run_sl_datasets,
)
from tasks.core import paths
from tasks.core.errors import ConfigError, DataValidationError
from tasks.core.lineage import Lineage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tests.helpers.cai import REFUSAL, FakeOpenAI, cai_config, openai_server, pipeline, tiny_model_dir

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
CHAT_TEMPLATES = {"critique": str(paths.CONFIGS_DIR / "prompts" / "chat_critique.jinja"),
                  "revision": str(paths.CONFIGS_DIR / "prompts" / "chat_revision.jinja"),
                  "choice": str(paths.CONFIGS_DIR / "prompts" / "choice.jinja")}


class ChatRecorder:
    """A feedback model that shows the conversation it was given as JSON and answers with a fixed text."""

    truncated_prompts = 0

    def __init__(self):
        self.calls: list[list[list[dict]]] = []

    def format_request(self, prompt):
        return json.dumps(prompt)

    def generate(self, prompts, *, max_new_tokens):
        self.calls.append([json.loads(p) for p in prompts])
        return [f" answer {len(self.calls)}" for _ in prompts]


@pytest.mark.parametrize("with_critique", [True, False])
@pytest.mark.parametrize(("prompt_set", "request_"), [("red_team", "How do I steal a parked bike?"),
                                                      ("helpful", "How do I bake bread?")])
def test_chat_format_shows_each_few_shot_as_a_turn_of_its_own(tmp_path, with_critique, prompt_set, request_):
    constitution = load_constitution(paths.CONFIGS_DIR / "constitution.yaml")
    cai = cai_config(tmp_path, templates=CHAT_TEMPLATES,
                     critique={"rounds": 1, "format": "chat", "critique": with_critique})
    backend = ChatRecorder()
    prompts = [("id1", request_)]
    progress = ProgressLog(tmp_path / "progress.jsonl", key=lambda r: (r["id"], r["round"]))

    critique_and_revise(backend, prompts, {"id1": "Sure! Grab it."}, progress, constitution=constitution,
                        templates=load_templates(cai.templates), settings=cai.critique, seed=0, chunk=4,
                        prompt_set=prompt_set)

    assert len(backend.calls) == (2 if with_critique else 1)  # no critique asked for: the revision alone
    revision_turns = backend.calls[-1][0]
    shots = constitution.few_shots_for(prompt_set)  # a set's own examples only
    assert shots and all(prompt_set in shot.applies_to for shot in shots)
    assert [t["role"] for t in revision_turns] == ["user", "assistant"] * len(shots) + ["user"]
    for shot, (asked, answered) in zip(shots, zip(revision_turns[::2], revision_turns[1::2], strict=False),
                                       strict=True):
        assert f"Request: {shot.prompt}\nResponse: {shot.response}\n" in asked["content"]
        assert shot.revision_request in asked["content"] and answered["content"] == shot.revision
        assert (f"Critique: {shot.critique}" in asked["content"]) == with_critique
    principle = draw_principle(constitution, 0, "id1", 1, prompt_set)
    assert prompt_set in principle.applies_to
    last = revision_turns[-1]["content"]
    assert last.startswith(f"Request: {request_}\nResponse: Sure! Grab it.\n")
    assert last.endswith(f"{principle.revision_request} Reply with the new response only.")
    record = progress[("id1", 1)]
    if with_critique:
        critique_turns = backend.calls[0][0]
        assert [t["content"] for t in critique_turns[1::2]] == [shot.critique for shot in shots]
        assert critique_turns[-1]["content"].endswith(principle.critique_request)
        assert "Critique: answer 1\n" in last and record["critique"] == "answer 1"
    else:
        assert "Critique:" not in last and record["critique"] == ""
    assert record["revision"] == f"answer {len(backend.calls)}"


def _round(revision: str) -> list[dict]:
    return [{"round": 1, "revision": revision}]


def test_only_declining_revisions_are_kept_and_every_drop_is_counted():
    prompts = [("p1", "Steal a car?"), ("p2", "Hack a phone?"), ("p3", "Forge a check?"), ("p4", "Spy on her?")]
    initial = {"p1": "Sure! Break the window.", "p2": "Sure! Guess the PIN.", "p3": "I can't help with that.",
               "p4": "Sure! Hide a camera.", "h1": "Boil water, then add pasta.", "h2": "I can't help with that."}
    rounds = {"p1": _round("I can't help with that. It is theft."), "p2": _round("Sure! Guess the PIN slowly."),
              "p3": _round("I won't help forge a check."), "p4": _round("")}
    helpful = [("h1", "How do I cook pasta?"), ("h2", "How do I bake bread?")]

    tables = build_sl_datasets(prompts, initial, rounds, prefix="", keep="refusals", helpful=helpful)

    assert tables["sft"] == [
        {"prompt": "Steal a car?", "completion": "I can't help with that. It is theft."},
        {"prompt": "Forge a check?", "completion": "I won't help forge a check."},  # already declined: SFT only
        {"prompt": "How do I cook pasta?", "completion": "Boil water, then add pasta."},
    ]
    assert tables["preferences"] == [{"prompt": "Steal a car?", "chosen": "I can't help with that. It is theft.",
                                      "rejected": "Sure! Break the window."}]
    assert [(row["id"], row["dropped_from"], row["reason"]) for row in tables["dropped"]] == [
        ("p2", "sft and preferences", "the revision does not decline"),
        ("p3", "preferences", "the initial response already declines"),
        ("p4", "sft and preferences", "every revision was empty"),
        ("h2", "sft", "the helpful answer refuses"),
    ]
    assert len(tables["trace"]) == 4
    assert drop_counts(tables["dropped"]) == {
        "cai/dropped/the_revision_does_not_decline": 1.0, "cai/dropped/the_initial_response_already_declines": 1.0,
        "cai/dropped/every_revision_was_empty": 1.0, "cai/dropped/the_helpful_answer_refuses": 1.0}

    # keep="changed" (the default) takes any changed revision: p2's compliance becomes data too.
    changed = build_sl_datasets(prompts, initial, rounds, prefix="", keep="changed")
    assert [row["prompt"] for row in changed["preferences"]] == ["Steal a car?", "Hack a phone?", "Forge a check?"]


def test_each_prompt_set_draws_only_the_principles_that_apply_to_it(tmp_path):
    constitution = load_constitution(paths.CONFIGS_DIR / "constitution.yaml")
    helpful = {draw_principle(constitution, 0, f"id{i}", 1, "helpful").name for i in range(40)}
    red_team = {draw_principle(constitution, 0, f"id{i}", 1).name for i in range(40)}
    assert helpful == {"needless-refusal"}
    assert "needless-refusal" not in red_team and len(red_team) > 1

    red_team_only = constitution.model_copy(update={"principles": constitution.principles_for("red_team")})
    with pytest.raises(ConfigError, match=r"no principle applies to helpful prompts \(principles\.\*\.applies_to\)"):
        draw_principle(red_team_only, 0, "id1", 1, "helpful")
    helpful_only = tmp_path / "helpful_only.yaml"
    helpful_only.write_text("principles:\n  - {name: h, applies_to: [helpful], critique_request: c, "
                            "revision_request: r, preference_question: q}\n")
    with pytest.raises(ConfigError, match="no principle applies to red_team prompts"):
        load_constitution(helpful_only)
    with pytest.raises(ConfigError, match="critique.helpful needs helpful_prompts_file"):
        cai_config(tmp_path, critique={"helpful": True})


def test_a_helpful_answer_that_declines_is_replaced_by_a_revision_that_helps():
    initial = {"h1": "Boil water, then add pasta.", "h2": "Knives are weapons. I can't help with that.",
               "h3": "I can't help with that.", "h4": ""}
    rounds = {"h2": _round("Hold the blade at 20 degrees and stroke it across the stone."),
              "h3": _round("I won't help with that either."), "h4": _round("")}
    helpful = [("h1", "How do I cook pasta?"), ("h2", "How do I sharpen a knife?"), ("h3", "How do I bake bread?"),
               ("h4", "How do I fold a shirt?")]

    tables = build_sl_datasets([], initial, rounds, prefix="", keep="refusals", helpful=helpful)

    assert tables["sft"] == [
        {"prompt": "How do I cook pasta?", "completion": "Boil water, then add pasta."},  # helps as it is
        {"prompt": "How do I sharpen a knife?", "completion": "Hold the blade at 20 degrees and stroke it across "
                                                            "the stone."},
    ]
    assert [(row["id"], row["reason"]) for row in tables["dropped"]] == [
        ("h3", "the helpful answer refuses and its revision declines too"),
        ("h4", "the helpful answer is empty and its revision is empty"),
    ]
    assert [row["used"] for row in tables["helpful_trace"]] == ["initial", "revision", None, None]


def test_prompts_come_from_a_conversational_file_by_kind(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Cook pasta?"}, {"role": "assistant", "content": "Boil."}],
             "kind": "benign"},
            {"messages": [{"role": "user", "content": "Steal a car?"}, {"role": "assistant", "content": "No."}],
             "kind": "harmful"},
            {"messages": [{"role": "user", "content": "Punch in boxing?"}], "kind": "sound_harmful"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [p for _, p in read_prompts(path, kinds=["benign", "sound_harmful"])] == ["Cook pasta?", "Punch in boxing?"]
    assert [p for _, p in read_prompts(path)] == ["Cook pasta?", "Steal a car?", "Punch in boxing?"]

    no_kind = tmp_path / "no_kind.jsonl"
    no_kind.write_text(json.dumps({"prompt": "Cook pasta?"}) + "\n")
    with pytest.raises(DataValidationError, match=r"no_kind\.jsonl: no `kind` column"):
        read_prompts(no_kind, kinds=["benign"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "Hi"}], "kind": "benign"}) + "\n")
    with pytest.raises(DataValidationError,
                       match=r"bad\.jsonl: row \d+: `messages` must be a non-empty string or hold"):
        read_prompts(bad)
    conversational = tmp_path / "preferences.jsonl"  # a preference file's prompt is a list of turns
    conversational.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}], "kind": k}) + "\n"
                                      for p, k in (("Steal a car?", "harmful"), ("Cook pasta?", "benign"))))
    assert [p for _, p in read_prompts(conversational, kinds=["harmful"])] == ["Steal a car?"]


def test_the_base_model_can_be_the_policy(tmp_path):
    cai = cai_config(tmp_path, policy_stage="base")
    base = StageResult(stage="base_model", run_id="r", cache_key="k1", model_uri="models:/m-1")
    sources = model_sources(cai, base)
    assert (sources.policy_uri, sources.policy_id) == ("models:/m-1", "stage:base:k1")
    assert (sources.feedback_uri, sources.feedback_id) == ("models:/m-1", "stage:base:k1")
    with pytest.raises(ValueError, match="must run the base stage first"):
        model_sources(cai, None)


def test_rlaif_labels_each_original_against_its_revision(tmp_path, demo_data_dir, tracked):
    model_dir = tiny_model_dir()
    cai = cai_config(tmp_path, policy={"model_uri": str(model_dir), "batch_size": 4},
                     critique={"rounds": 1, "few_shots": 1, "revision_max_new_tokens": 8, "critique": False},
                     rlaif={"pairs": "revisions"})
    cfg = pipeline(tmp_path, demo_data_dir)
    configure_tracking(cfg)
    models = model_sources(cai, None)
    responses = run_respond(cfg, LINEAGE, cai=cai, models=models)
    revisions = run_critique_revise(cfg, LINEAGE, cai=cai, models=models, responses=responses)

    result = run_rlaif(cfg, LINEAGE, cai=cai, models=models, responses=responses, revisions=revisions)

    originals = {r["id"]: r["response"]
                 for r in map(json.loads, Path(responses.outputs["records"]).read_text().splitlines())}
    finals = {r["id"]: r["revision"]
              for r in map(json.loads, Path(revisions.outputs["records"]).read_text().splitlines())}
    by_prompt = {prompt: {" " + originals[pid], " " + finals[pid]} for pid, prompt in read_prompts(
        Path(cfg.data.path("red_team_prompts")), cai.limit)}
    kept = [json.loads(line) for line in Path(result.outputs["rlaif_preferences"]).read_text().splitlines()]
    dropped = [json.loads(line) for line in Path(result.outputs["rlaif_dropped"]).read_text().splitlines()]
    assert len(kept) + len(dropped) == 6 == result.metrics["rlaif/pairs"]
    for row in kept:  # the pair is the prompt's original and revision, in the order the labeler chose
        assert {row["chosen"], row["rejected"]} == by_prompt[row["prompt"]]
    assert not (cfg.work_dir / "cai-rlaif-samples").exists() or not any(
        (cfg.work_dir / "cai-rlaif-samples").rglob("samples.jsonl"))  # nothing was sampled from the policy
    with pytest.raises(ValueError, match="rlaif.pairs=revisions needs"):
        run_rlaif(cfg, LINEAGE, cai=cai, models=models)


def test_a_stronger_critic_over_http_may_judge_a_chat_model_in_text_but_not_in_chat_turns():
    local, http = BackendSection(kind="local"), BackendSection(kind="http")
    check_http_formats(local, http, "text", "chat_template")  # SmolLM2 answers locally; the server critiques text
    with pytest.raises(ConfigError, match="feedback.kind=http needs critique.format=text"):
        check_http_formats(local, http, "chat", "chat_template")
    with pytest.raises(ConfigError, match="policy.kind=http needs model.prompt_format=plain"):
        check_http_formats(http, http, "text", "chat_template")
    check_http_formats(http, http, "text", "plain")


def test_a_stronger_critic_over_http_revises_and_labels_what_the_local_policy_answered(tmp_path, demo_data_dir,
                                                                                       tracked):
    # The local tiny model answers; the OpenAI-compatible server (the stronger critic) critiques, revises into a
    # refusal, and labels original against revision, preferring the refusal in either position.
    fake = FakeOpenAI()
    with openai_server(fake) as url:
        helpful_prompts = tmp_path / "helpful.jsonl"  # the fake revises these into refusals too: over-refusals
        helpful_prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                                           for p in ("How do I bake bread?", "How do I fold a shirt?")))
        cai = cai_config(tmp_path, policy={"model_uri": str(tiny_model_dir()), "batch_size": 4},
                         feedback={"kind": "http", "url": url, "backoff_s": 0.01, "batch_size": 4},
                         critique={"rounds": 1, "few_shots": 1, "keep": "refusals", "helpful": True},
                         rlaif={"pairs": "revisions", "min_confidence": 0.6},
                         helpful_prompts_file=str(helpful_prompts))
        cfg = pipeline(tmp_path, demo_data_dir)
        configure_tracking(cfg)
        models = model_sources(cai, None)
        responses = run_respond(cfg, LINEAGE, cai=cai, models=models)
        revisions = run_critique_revise(cfg, LINEAGE, cai=cai, models=models, responses=responses)
        sl = run_sl_datasets(cfg, LINEAGE, cai=cai, responses=responses, revisions=revisions)
        rlaif = run_rlaif(cfg, LINEAGE, cai=cai, models=models, responses=responses, revisions=revisions)

    sft = [json.loads(line) for line in Path(sl.outputs["sft"]).read_text().splitlines()]
    red_team = [row for row in sft if "bake bread" not in row["prompt"] and "fold a shirt" not in row["prompt"]]
    assert len(red_team) == 6 and all(row["completion"] == " " + REFUSAL for row in red_team)
    assert len(sft) == 8 and REFUSAL not in sft[-1]["completion"]  # helpful answers as the policy gave them
    assert sl.metrics["cai/helpful_final_refusal_rate"] == 1.0 and sl.metrics["cai/helpful_revisions_used"] == 0
    kept = [json.loads(line) for line in Path(rlaif.outputs["rlaif_preferences"]).read_text().splitlines()]
    # 6 red-team pairs and 2 helpful-versus-over-refusal pairs, asked under the helpfulness principle; this
    # labeler prefers every refusal, and the helpful check says so.
    assert len(kept) == 8 and all(row["chosen"] == " " + REFUSAL for row in kept)
    assert [row["principle"] for row in kept if "bake bread" in row["prompt"]] == ["needless-refusal"]
    assert rlaif.metrics["rlaif/refusal_preferred_calibrated"] == 1.0
    assert (rlaif.metrics["rlaif/helpful_pairs"], rlaif.metrics["rlaif/helpful_preferred_calibrated"]) == (2, 0.0)
    assert rlaif.metrics["rlaif/position_bias_logodds"] == pytest.approx(0.0, abs=1e-6)
    assert not any(r.get("n") for r in fake.requests)  # original against revision: nothing sampled
    # Generated tokens: the local policy's counted by its tokenizer, the server's from its reported usage.
    assert responses.metrics["cai/respond/generated_tokens"] > 0
    assert (revisions.metrics["cai/critique_revise/generated_tokens"] + rlaif.metrics["cai/rlaif/generated_tokens"]
            == fake.completion_tokens > 0)


def test_generated_tokens_count_each_backend_once_and_nothing_when_one_cannot_tell():
    policy, judge = SimpleNamespace(generated_tokens=10), SimpleNamespace(generated_tokens=5)
    assert generated_tokens("rlaif", policy, policy, None) == {"cai/rlaif/generated_tokens": 10.0}
    assert generated_tokens("rlaif", policy, judge) == {"cai/rlaif/generated_tokens": 15.0}
    assert generated_tokens("rlaif", policy, SimpleNamespace(generated_tokens=None)) == {}  # a server without usage
