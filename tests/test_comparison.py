"""The results table of a run: a typed row per declared method, and its renderings (pure: no MLflow)."""

from __future__ import annotations

import pytest

from tasks.report.results import (
    Method,
    ResultRow,
    build_rows,
    comparison_markdown,
    markdown_table,
    round_line,
    summary_table,
)
from tasks.run.contract import StageResult

HUMAN = ("sft_train", "preferences_train")
SFT = Method(label="sft", role="baseline", stages=("sft",), human_data=("sft_train",))
DPO = Method(label="dpo", stages=("sft", "dpo"), human_data=HUMAN)
PPO = Method(label="ppo", stages=("sft", "reward", "ppo"), human_data=HUMAN)
RLOO = Method(label="rloo", stages=("sft", "reward", "rloo"), human_data=HUMAN)
# As flows.pipeline.train_and_promote declares it: its stages are its inputs' (optimizer_inputs) and its own.
SAFE_PPO = Method(label="safe_ppo", stages=("sft", "reward", "cost", "safe_ppo"), human_data=HUMAN)


def _eval(method: str, harmful: float, benign: float, **extra: float) -> StageResult:
    metrics = {"eval/harmful_refusal_rate": harmful, "eval/harmful_prompts": 10, "eval/benign_refusal_rate": benign,
               "eval/benign_prompts": 20, "eval/reward_mean": 0.5, "eval/kl_to_reference": 0.0, **extra}
    return StageResult(stage="evaluate", run_id=f"run-{method}", cache_key="k", metrics=metrics)


def test_a_row_per_evaluated_method_with_its_stages_data_cost_and_intervals():
    results = {
        "evaluate-sft": _eval("sft", 0.0, 0.0),
        "evaluate-dpo": _eval("dpo", 1.0, 0.05, **{"eval/win_rate_vs_sft": 0.7}),
        "evaluate-ppo": _eval("ppo", 0.5, 0.0),
        "promote": StageResult(stage="promote", run_id="p", cache_key="k", outputs={"promoted": "dpo"},
                               metrics={"gate/dpo/passed": 1.0, "gate/ppo/passed": 0.0}),
    }
    seconds = {"sft": 60.0, "reward": 120.0, "dpo": 30.0, "ppo": 300.0}
    tokens = {"sft": 0.0, "reward": 0.0, "dpo": 0.0, "ppo": 12345.0}
    built = build_rows([SFT, DPO, PPO, RLOO], results, human_rows={"sft_train": 40, "preferences_train": 100},
                       seconds=seconds, tokens=tokens)
    rows = {row.method: row for row in built}

    assert list(rows) == ["sft", "dpo", "ppo"]  # in the order declared; rloo was not evaluated
    assert rows["ppo"].stages == ["sft", "reward", "ppo"] and rows["ppo"].wall_seconds == 480.0
    assert rows["dpo"].wall_seconds == 90.0
    assert [rows[m].generated_tokens for m in ("sft", "dpo", "ppo")] == [0.0, 0.0, 12345.0]
    assert (rows["sft"].demos, rows["sft"].preference_pairs) == (40, 0)
    assert (rows["dpo"].demos, rows["dpo"].preference_pairs) == (40, 100)
    assert [rows[m].gates for m in ("sft", "dpo", "ppo")] == ["baseline", "promoted", "failed"]
    # 5 of 10 harmful prompts refused: Wilson [0.2366, 0.7634]; 1 of 20 benign: [0.0089, 0.2361]
    # (centre 0.1225, half-width 0.1136).
    assert rows["ppo"].harmful_refusal.successes == 5
    assert rows["ppo"].harmful_refusal.ci95 == pytest.approx([0.236593, 0.763407], abs=1e-5)
    assert rows["dpo"].benign_over_refusal.ci95 == pytest.approx([0.008881, 0.236136], abs=1e-5)
    assert rows["dpo"].sound_harmful_over_refusal is None  # this eval set has no such prompts

    table = comparison_markdown(built)
    assert ("| ppo | sft → reward → ppo | 40 | 100 | 0 | - | 8.0 min | 12,345 | 0.50 [0.24, 0.76] (10) "
            "| 0.00 [0.00, 0.16] (20) | - | - | - | 0.50 | - | - | 0.0 | - | failed |") in table
    assert "| dpo |" in table and "| 0.70 |" in table and table.rstrip().endswith("not in evaluation.")
    # The JSON the run logs reads back as the same rows.
    assert [ResultRow.model_validate(row.model_dump(mode="json")) for row in built] == built


def test_safe_rlhf_is_a_row_of_its_own_that_pays_for_its_cost_model():
    results = {"evaluate-sft": _eval("sft", 0.0, 0.0), "evaluate-ppo": _eval("ppo", 0.5, 0.0),
               "evaluate-safe_ppo": _eval("safe_ppo", 0.9, 0.05),
               "promote": StageResult(stage="promote", run_id="p", cache_key="k", outputs={"promoted": "safe_ppo"},
                                      metrics={"gate/ppo/passed": 0.0, "gate/safe_ppo/passed": 1.0})}
    seconds = {"sft": 60.0, "reward": 120.0, "cost": 90.0, "ppo": 300.0, "safe_ppo": 330.0}
    rows = {row.method: row for row in build_rows([SFT, PPO, SAFE_PPO], results, seconds=seconds,
                                                   human_rows={"sft_train": 40, "preferences_train": 100})}
    assert list(rows) == ["sft", "ppo", "safe_ppo"]
    safe = rows["safe_ppo"]
    assert safe.stages == ["sft", "reward", "cost", "safe_ppo"] and safe.wall_seconds == 600.0  # 60 + 120 + 90 + 330
    assert rows["ppo"].wall_seconds == 480.0  # the cost model is safe_ppo's alone
    assert (safe.gates, rows["ppo"].gates) == ("promoted", "failed")
    assert safe.harmful_refusal.successes == 9 and (safe.demos, safe.preference_pairs) == (40, 100)
    assert "| safe_ppo | sft → reward → cost → safe_ppo |" in comparison_markdown(list(rows.values()))


def test_a_stage_without_a_measured_time_leaves_the_methods_wall_time_unknown():
    results = {"evaluate-ppo": _eval("ppo", 0.5, 0.0)}
    (row,) = build_rows([PPO], results, human_rows={"sft_train": 1, "preferences_train": 1},
                        seconds={"sft": 60.0, "ppo": 300.0})
    assert row.wall_seconds is None
    assert row.generated_tokens is None  # nor its tokens: none given
    assert "| ppo | sft → reward → ppo | 1 | 1 | 0 | - | - |" in markdown_table(
        [row], ("method", "stages", "demos", "preference pairs", "principles", "wall", "generated tokens"))


def test_constitutional_ai_inside_the_comparison_is_judged_and_gated_with_the_others():
    promote = StageResult(stage="promote", run_id="p", cache_key="k", outputs={"promoted": "sl-cai"},
                          metrics={"gate/dpo/passed": 0.0, "gate/sl-cai/passed": 1.0, "gate/rlaif-dpo/passed": 0.0})
    cai_data = StageResult(stage="validate", run_id="c", cache_key="k",
                           metrics={"validate/sft_train/rows": 90, "validate/preferences_train/rows": 12})
    results = {"evaluate-sft": _eval("sft", 0.2, 0.0), "evaluate-dpo": _eval("dpo", 0.9, 0.1),
               "evaluate-sl-cai": _eval("sl-cai", 0.6, 0.0, **{"eval/win_rate_vs_sft": 0.55}),
               "evaluate-rlaif-dpo": _eval("rlaif-dpo", 0.7, 0.05), "promote": promote, "cai-data": cai_data,
               "cai-version": StageResult(stage="cai-version", run_id="v", cache_key="k",
                                          outputs={"policy": "stage:sft:abc"})}
    seconds = {"sft": 60.0, "dpo": 30.0, "cai-data": 600.0, "cai-sft": 60.0, "cai-dpo": 30.0}
    tokens = {"sft": 0.0, "dpo": 0.0, "cai-data": 5000.0, "cai-sft": 0.0, "cai-dpo": 0.0}
    # Declared as the comparison flow declares them when the SFT model made CAI's data.
    cai = {"human_data": ("sft_train",), "ai_source": "cai-data"}
    methods = [SFT, DPO, Method(label="sl-cai", stages=("cai-data", "cai-sft"), ai_data=("sft_train",), **cai),
               Method(label="rlaif-dpo", stages=("cai-data", "cai-sft", "cai-dpo"),
                      ai_data=("sft_train", "preferences_train"), about="Constitutional AI: DPO on its AI labels",
                      **cai)]
    rows = {row.method: row for row in build_rows(methods, results, human_rows={"sft_train": 40,
                                                                                 "preferences_train": 100},
                                                  seconds=seconds, tokens=tokens, principles=4)}
    sl, rlaif = rows["sl-cai"], rows["rlaif-dpo"]
    assert (sl.gates, rlaif.gates, rows["dpo"].gates) == ("promoted", "failed", "failed")  # one promotion
    assert sl.reward == 0.5 and sl.win_rate_vs_sft == 0.55  # the same reward model judged every row
    # The SFT model answered, critiqued and revised: the human demos behind it are CAI's too; no human pairs.
    assert (sl.demos, sl.preference_pairs, sl.principles) == (40, 0, 4)
    assert (rows["dpo"].principles, rows["sft"].principles) == (0, 0)
    assert (sl.generated_tokens, rlaif.generated_tokens) == (5000.0, 5000.0)
    assert (rlaif.wall_seconds, rlaif.ai_data) == (690.0, "90 demos, 12 AI-labeled pairs")
    assert rlaif.about == "Constitutional AI: DPO on its AI labels"


def test_every_rendering_reads_the_same_rows():
    results = {"evaluate-base": _eval("base", 0.087, 0.0), "evaluate-sft": _eval("sft", 0.04, 0.0),
               "evaluate-dpo": _eval("dpo", 0.93, 0.0, **{"eval/kl_to_reference": 12.25,
                                                          "eval/benign_helpful_rate": 0.85,
                                                          "eval/benign_helpful_prompts": 20}),
               "evaluate-champion": _eval("champion", 0.5, 0.1),
               "promote": StageResult(stage="promote", run_id="p", cache_key="p", outputs={"promoted": "dpo"},
                                      metrics={"gate/dpo/passed": 1.0})}
    methods = [Method(label="base", role="before"), SFT, DPO, Method(label="champion", role="champion")]
    rows = build_rows(methods, results, human_rows={"sft_train": 40, "preferences_train": 100})
    lines = summary_table(rows).splitlines()
    assert lines[0] == ("| method | harmful refusal | benign over-refusal | benign helpful | reward | KL to SFT "
                        "| gates |")
    assert lines[2:6] == ["| base | 0.09 | 0.00 | - | 0.50 | 0.0 | - |",
                          "| sft | 0.04 | 0.00 | - | 0.50 | 0.0 | baseline |",
                          "| dpo | 0.93 | 0.00 | 0.85 | 0.50 | 12.2 | promoted |",
                          "| champion | 0.50 | 0.10 | - | 0.50 | 0.0 | champion |"]
    assert lines[-1] == "Held-out prompts, greedy: 10 harmful, 20 benign."
    # The champion's data and cost were another run's: unknown, not zero.
    assert (rows[3].demos, rows[3].wall_seconds) == (None, None)
    assert "| champion | - | - | - | - |" in comparison_markdown(rows)
    # A feedback round's line leaves the re-evaluated champion out.
    assert round_line(rows) == ("base: harmful refusal 0.09, benign over-refusal 0.00, benign helpful -, reward 0.50, "
                                "KL to SFT 0.0, gates -; sft: harmful refusal 0.04, benign over-refusal 0.00, benign "
                                "helpful -, reward 0.50, KL to SFT 0.0, gates baseline; dpo: harmful refusal 0.93, "
                                "benign over-refusal 0.00, benign helpful 0.85, reward 0.50, KL to SFT 12.2, gates "
                                "promoted;")
    assert "| 0.85 [0.64, 0.95] (20) |" in comparison_markdown(rows)


def test_the_fixed_prompts_are_the_first_two_of_each_kind_with_every_methods_answer():
    from tasks.orchestration.comparison_report import fixed_answers

    def rows(tag: str, skip: str = "") -> list[dict]:
        kinds = ["benign", "harmful", "benign", "harmful", "harmful", "sound_harmful", "benign"]
        return [{"prompt": f"p{i}", "kind": kind, "response": f" {tag}{i} ", "refused": tag == "dpo" and
                 kind == "harmful"} for i, kind in enumerate(kinds) if f"p{i}" != skip]

    answers = fixed_answers({"sft": rows("sft"), "dpo": rows("dpo", skip="p3")})
    assert [(a["kind"], a["prompt"]) for a in answers] == [
        ("harmful", "p1"), ("harmful", "p3"), ("sound_harmful", "p5"), ("benign", "p0"), ("benign", "p2")]
    assert answers[0]["methods"] == {"sft": {"response": "sft1", "refused": False},
                                     "dpo": {"response": "dpo1", "refused": True}}
    assert answers[1]["methods"]["dpo"] is None  # DPO's generations lack p3: shown as "-", not dropped


def test_the_report_page_escapes_answers_and_embeds_its_plots():
    from tasks.report.page import render_report

    page = render_report(title="t", table_markdown="| a | b |\n|---|---|\n| 1 | <2> |\n\nnote\n",
                         summary_png=b"\x89PNG-1", curves_png=b"\x89PNG-2",
                         answers=[{"prompt": "<script>x</script>", "kind": "harmful",
                                   "methods": {"sft": {"response": "a & b", "refused": False}, "dpo": None}}],
                         lineage={"config hash": "abc"})
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert "<td>&lt;2&gt;</td>" in page and "<p>note</p>" in page
    assert page.count("data:image/png;base64,") == 2 and "<td>-</td>" in page
