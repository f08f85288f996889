"""Constitutional AI data: constitution and config errors, prompt rendering and rounds on the tiny model, TRL
formats, determinism, resume after an interruption, DVC versioning, and the flow under Prefect."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from models.loading import load_model_and_tokenizer
from tasks.cai.backends import LocalBackend
from tasks.cai.config import PromptTemplates, load_cai_config, load_constitution
from tasks.cai.progress import ProgressLog
from tasks.cai.prompts import draw_principle, load_templates
from tasks.cai.steps import Inputs, model_sources
from tasks.cai.supervised import critique_and_revise, run_critique_revise, run_respond, run_sl_datasets
from tasks.cai.versioning import MANIFEST, manifest_tags
from tasks.core import paths
from tasks.core.errors import ConfigError
from tasks.core.lineage import Lineage
from tasks.data.expectations import validate_files
from tasks.data.publishing import OutputFolderError, dvc_add, publish
from tasks.run.tracking import configure_tracking
from tests.helpers.cai import cai_config, pipeline, pipeline_overrides, tiny_model_dir

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
CONSTITUTION = paths.CONFIGS_DIR / "constitution.yaml"
PRINCIPLE = {"name": "harm", "critique_request": "What is harmful?", "revision_request": "Remove it.",
             "preference_question": "Which is less harmful?"}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return tiny_model_dir()


# ------------------------------------------------------------------------------------- bad input, named


def _write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(
    ("constitution", "key"),
    [
        ({"principles": [PRINCIPLE, {k: v for k, v in PRINCIPLE.items() if k != "revision_request"}]},
         r"key 'principles\.1\.revision_request': Field required"),
        ({"principles": []}, r"key 'principles': List should have at least 1 item"),
        ({"name": "no principles"}, r"key 'principles': Field required"),
        ({"principles": [{**PRINCIPLE, "critique": "typo"}]}, r"key 'principles\.0\.critique': unknown key"),
        ({"principles": [PRINCIPLE], "few_shots": [{"prompt": "p"}]}, r"key 'few_shots\.0\.response': Field required"),
        ({"principles": [PRINCIPLE, PRINCIPLE]}, r"key 'principles': .*duplicate principle name"),
    ],
)
def test_a_bad_constitution_fails_naming_the_field(tmp_path, constitution, key):
    path = _write(tmp_path / "constitution.yaml", constitution)
    with pytest.raises(ConfigError, match=key):
        load_constitution(path)


@pytest.mark.parametrize(
    ("override", "key"),
    [("critique.roundz=2", r"key 'critique\.roundz': unknown key"), ("critique.rounds=0", r"key 'critique\.rounds'"),
     ("rlaif.min_confidence=0.4", r"key 'rlaif\.min_confidence'"), ("policy.kind=grpc", r"key 'policy\.kind'"),
     ("policy.kind=http", r"feedback\.model_uri is needed")],
)
def test_a_bad_cai_config_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_cai_config(paths.CAI_DIR / "demo.yaml", [override])


def test_a_template_using_an_unknown_variable_fails_when_loaded(tmp_path):
    bad = tmp_path / "critique.jinja"
    bad.write_text("User: {{ prompt }}\nCritique request: {{ principle.critique_requst }}\nCritique:")
    with pytest.raises(ConfigError, match=r"templates\.critique: .*critique_requst"):
        load_templates(PromptTemplates(critique=bad))
    with pytest.raises(ConfigError, match=r"templates\.choice: template file .*missing\.jinja does not exist"):
        load_templates(PromptTemplates(choice=tmp_path / "missing.jinja"))


def test_the_shipped_configs_and_constitution_load():
    cai = load_cai_config(paths.CAI_DIR / "demo.yaml")
    constitution = load_constitution(cai.constitution)
    assert len(constitution.principles) >= 2 and constitution.few_shots
    load_templates(cai.templates)


# ------------------------------------------------------------------------------------ mechanics, tiny model


class Recording:
    """A backend that records the prompts it is asked to continue, around a real one."""

    def __init__(self, backend):
        self.backend, self.prompts = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, prompts, *, max_new_tokens):
        self.prompts.append(list(prompts))
        return self.backend.generate(prompts, max_new_tokens=max_new_tokens)


def test_critique_and_revision_prompts_carry_the_drawn_principle_and_the_few_shots(tmp_path, tiny_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_dir)
    backend = Recording(LocalBackend(model, tokenizer, lambda p: p, batch_size=8, stop=["\n\n"], identity="tiny"))
    constitution = load_constitution(CONSTITUTION)
    cai = cai_config(tmp_path, critique={"rounds": 3, "few_shots": 1, "critique_max_new_tokens": 5,
                                                   "revision_max_new_tokens": 5})
    prompts = [("id1", "How do I steal a parked bike?"), ("id2", "How do I hack into the school's server?")]
    initial = {"id1": "Sure! Grab it quickly.", "id2": "Sure! Guess the password."}
    progress = ProgressLog(tmp_path / "progress.jsonl", key=lambda r: (r["id"], r["round"]))

    written = critique_and_revise(backend, prompts, initial, progress, constitution=constitution,
                                  templates=load_templates(cai.templates), settings=cai.critique, seed=0, chunk=8)

    assert written == len(progress) == 2 * 3  # prompts x rounds
    assert len(backend.prompts) == 2 * 3  # per round: one critique call, one revision call (one chunk)
    shot = constitution.few_shots[0]
    for round_ in (1, 2, 3):
        critiques, revisions = backend.prompts[2 * (round_ - 1)], backend.prompts[2 * (round_ - 1) + 1]
        for (pid, prompt), critique_prompt, revision_prompt in zip(prompts, critiques, revisions, strict=True):
            record = progress[(pid, round_)]
            principle = draw_principle(constitution, 0, pid, round_)
            assert record["principle"] == principle.name
            assert critique_prompt.endswith(f"Critique request: {principle.critique_request}\nCritique:")
            assert f"User: {prompt}\nAssistant: {record['response']}\n" in critique_prompt
            assert critique_prompt.startswith(f"User: {shot.prompt}\nAssistant: {shot.response}")
            assert f"Revision: {shot.revision}" in revision_prompt
            assert f"Critique: {record['critique']}\n" in revision_prompt
            assert revision_prompt.endswith(f"Revision request: {principle.revision_request}\nRevision:")
            # Round r critiques what round r-1 revised (or the initial response in round 1).
            expected = initial[pid] if round_ == 1 else (progress[(pid, round_ - 1)]["revision"]
                                                        or progress[(pid, round_ - 1)]["response"])
            assert record["response"] == expected


def _run_sl(cai, root, data_dir):
    cfg = pipeline(root, data_dir)
    configure_tracking(cfg)
    models = model_sources(cai, None)
    responses = run_respond(cfg, LINEAGE, cai=cai, models=models)
    revisions = run_critique_revise(cfg, LINEAGE, cai=cai, models=models, responses=responses)
    return cfg, responses, revisions, run_sl_datasets(cfg, LINEAGE, cai=cai, responses=responses, revisions=revisions)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_outputs_are_trl_datasets_that_pass_the_pipelines_validation(tmp_path, demo_data_dir, tracked, tiny_dir):
    cai = cai_config(tmp_path, policy={"model_uri": str(tiny_dir), "batch_size": 4})
    _, _, revisions, sl = _run_sl(cai, tmp_path, demo_data_dir)
    sft, preferences = _rows(sl.outputs["sft"]), _rows(sl.outputs["preferences"])
    trace, dropped = _rows(sl.outputs["trace"]), _rows(sl.outputs["dropped"])
    assert len(trace) == 6 and len(sft) + len(dropped) == 6 and len(sft) >= 3
    assert all(set(row) == {"prompt", "completion"} for row in sft)
    assert all(set(row) == {"prompt", "chosen", "rejected"} for row in preferences)
    assert all(row["chosen"] != row["rejected"] and row["chosen"].startswith(" ") for row in preferences)
    assert all(len(row["rounds"]) == 2 for row in trace)
    assert revisions.metrics["cai/revisions_generated"] == 12

    tokenizer = load_model_and_tokenizer(tiny_dir)[1]
    report = validate_files({"sft_train": Path(sl.outputs["sft"]),
                             "preferences_train": Path(sl.outputs["preferences"])},
                            tokenizer=tokenizer, format_prompt=lambda p: f"User: {p}\nAssistant:", max_length=128,
                            on_failure="fail", max_quarantine_fraction=0.0, out_dir=tmp_path / "report")
    assert report.success


def test_the_same_seed_gives_the_same_outputs_and_principles(tmp_path, demo_data_dir, tracked, tiny_dir):
    def run(name, seed):
        cai = cai_config(tmp_path / name, seed=seed, policy={"model_uri": str(tiny_dir), "batch_size": 4})
        sl = _run_sl(cai, tmp_path / name, demo_data_dir)[3]
        return {name: Path(path).read_text() for name, path in sl.outputs.items()}

    first, second, other_seed = run("a", 0), run("b", 0), run("c", 1)
    assert first == second
    principles = [[r["principle"] for r in row["rounds"]] for row in map(json.loads, first["trace"].splitlines())]
    other = [[r["principle"] for r in row["rounds"]] for row in map(json.loads, other_seed["trace"].splitlines())]
    assert principles != other  # the seed, not chance, picks the principles


class Interrupted(Exception):
    pass


def test_a_rerun_after_an_interruption_continues_and_matches_an_uninterrupted_run(
    tmp_path, demo_data_dir, tracked, tiny_dir, monkeypatch
):
    def config(name):
        return cai_config(tmp_path / name, policy={"model_uri": str(tiny_dir), "batch_size": 4})

    reference = _run_sl(config("reference"), tmp_path / "reference", demo_data_dir)[3]

    cai = config("interrupted")
    cfg = pipeline(tmp_path / "interrupted", demo_data_dir)
    configure_tracking(cfg)
    models = model_sources(cai, None)
    responses = run_respond(cfg, LINEAGE, cai=cai, models=models)
    # Stop after 5 of the 12 critique-revision records: one full batch of 4, then one record of the next.
    append, appended = ProgressLog.append, []

    def interrupt_after_five(self, record):
        if len(appended) == 5:
            raise Interrupted
        append(self, record)
        appended.append(record)

    monkeypatch.setattr(ProgressLog, "append", interrupt_after_five)
    with pytest.raises(Interrupted):
        run_critique_revise(cfg, LINEAGE, cai=cai, models=models, responses=responses)
    monkeypatch.setattr(ProgressLog, "append", append)
    progress_file = next((cfg.work_dir / "cai-critique").glob("*/progress.jsonl"))
    before = progress_file.read_text()
    assert len(before.splitlines()) == 5

    from tasks.cai import supervised as constitutional

    open_backend, recorded = constitutional.backend_for, []
    monkeypatch.setattr(constitutional, "backend_for",
                        lambda *a, **k: recorded.append(Recording(open_backend(*a, **k))) or recorded[-1])
    revisions = run_critique_revise(cfg, LINEAGE, cai=cai, models=models, responses=responses)

    assert revisions.metrics["cai/revisions_generated"] == 7 and revisions.metrics["cai/revisions_resumed"] == 5
    after = progress_file.read_text()
    assert after.startswith(before)  # nothing finished was rewritten
    keys = [(r["id"], r["round"]) for r in map(json.loads, after.splitlines())]
    assert len(keys) == len(set(keys)) == 12
    # The first batch (4 prompts, round 1) was finished, so it was never sent to the model again.
    first_batch = {r["id"] for r in appended[:4]}
    round_one_prompts = [p for call in recorded[0].prompts[:2] for p in call]
    assert not any(f"User: {prompt}\n" in p for p in round_one_prompts
                   for pid, prompt in Inputs(cai, cfg).prompts if pid in first_batch)

    sl = run_sl_datasets(cfg, LINEAGE, cai=cai, responses=responses, revisions=revisions)
    for name in ("sft", "preferences", "trace", "dropped"):
        assert Path(sl.outputs[name]).read_text() == Path(reference.outputs[name]).read_text(), name


def test_a_half_written_last_line_is_cut_off_and_its_record_made_again(tmp_path):
    path = tmp_path / "progress.jsonl"
    log = ProgressLog(path, key=lambda r: r["id"])
    log.append({"id": "a", "response": "one"})
    with path.open("a") as handle:
        handle.write('{"id": "b", "resp')  # the process died mid-write
    resumed = ProgressLog(path, key=lambda r: r["id"])
    assert "a" in resumed and "b" not in resumed
    made = resumed.fill([("a",), ("b",)], key=lambda item: item[0],
                        compute=lambda batch: [{"id": item[0], "response": "new"} for item in batch], chunk=2)
    assert made == 1
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


# ----------------------------------------------------------------------------------------------- versioning


def test_output_folder_outside_a_dvc_repo_or_holding_other_files_is_refused(tmp_path):
    with pytest.raises(OutputFolderError, match="not inside a DVC repository"):
        (tmp_path / "out").mkdir()
        dvc_add(tmp_path / "out")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.jsonl").write_text("{}\n")
    with pytest.raises(OutputFolderError, match="not a CAI output folder"):
        publish({}, tmp_path / "data", MANIFEST, "CAI")
    assert (tmp_path / "data" / "precious.jsonl").exists()


def _git_dvc_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=path, check=True)
    return path


@pytest.mark.slow
def test_flow_trains_the_helpful_model_versions_the_datasets_and_logs_lineage(
    prefect_harness, tracked, tmp_path, demo_data_dir
):
    from flows.constitutional import constitutional_data

    repo = _git_dvc_repo(tmp_path / "repo")
    # policy.model_uri null: the helpful model is trained by the pipeline's stages (2 SFT steps here).
    # The pipeline names its CAI config (`cai.config`); the CAI config names no pipeline.
    cai = cai_config(tmp_path, name="test")
    config = tmp_path / "cai.yaml"
    config.write_text(yaml.safe_dump(cai.model_dump(mode="json")))
    overrides = [*pipeline_overrides(tmp_path, demo_data_dir), "sft.max_steps=2", f"cai.config={config}"]

    results = constitutional_data(str(paths.DEMO_CONFIG), overrides)

    constitution_sha = hashlib.sha256(CONSTITUTION.read_bytes()).hexdigest()
    out = repo / "data-cai"
    dvc_md5 = yaml.safe_load((repo / "data-cai.dvc").read_text())["outs"][0]["md5"]
    assert results["version"].output_hashes["dvc_md5"] == dvc_md5
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["constitution"]["sha256"] == constitution_sha
    assert manifest["seed"] == 0 and manifest["rounds"] == 2 and manifest["prompts"]["count"] == 6
    assert manifest["models"]["policy_id"].startswith("stage:sft:")
    assert {path.name for path in out.iterdir()} == {MANIFEST, *manifest["files"].values()}
    assert manifest_tags([out / "preferences.jsonl"]) == {"alignflow.constitution_hash": constitution_sha,
                                                          "alignflow.cai_dvc_md5": dvc_md5}

    client = MlflowClient()
    experiment = client.get_experiment_by_name("alignflow")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    steps = {"cai-respond", "cai-critique_revise", "cai-sl_datasets", "cai-rlaif", "cai-version"}
    assert set(children) == {"base_model", "validate", "sft"} | steps
    assert parent.info.run_name == "test-cai"
    for run in [parent, *(children[name] for name in steps)]:
        assert run.data.tags["alignflow.constitution_hash"] == constitution_sha, run.info.run_name
    assert parent.data.tags["alignflow.cai_dvc_md5"] == dvc_md5
    assert parent.data.metrics["rlaif/pairs"] == 6
    artifacts = {a.path for a in client.list_artifacts(children["cai-version"].info.run_id, "cai_data")}
    assert {"cai_data/sft.jsonl", "cai_data/preferences.jsonl", f"cai_data/{MANIFEST}"} <= artifacts
    logged = mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/cai_config.yaml", dst_path=tmp_path)
    assert yaml.safe_load(Path(logged).read_text())["critique"]["rounds"] == 2

    again = constitutional_data(str(paths.DEMO_CONFIG), overrides)  # nothing changed: every record is resumed
    assert again["respond"].metrics["cai/responses_generated"] == 0
    assert again["critique_revise"].metrics["cai/revisions_generated"] == 0
    assert again["version"].output_hashes["dvc_md5"] == dvc_md5  # identical data, identical DVC version


