"""The MLflow UI and the comparison report tell what a pipeline run did, without a guide: `alignflow compare` on
the demo (every method, Constitutional AI included, in one parent run), a real `mlflow server` on its store, and
headless Chromium on the pages a user opens first (the experiment, the pipeline run, the registry) and on the report.

Screenshots of those three go to $ALIGNFLOW_SCREENSHOTS, else to the test's temporary folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient

from flows.cli.pipeline import compare
from tasks.core import paths
from tasks.orchestration.comparison_report import results_from_file
from tasks.run.tracking import ui_link
from tests.helpers.browser import chromium, save_screenshot
from tests.helpers.services import free_port

pytestmark = pytest.mark.heavy(3)  # about 3 minutes (conftest.py)

WAIT_S = 90  # the UI renders slowly on two busy cores
ML = "?workflowType=machine_learning"  # MLflow 3.17's UI opens in its GenAI mode unless told otherwise


@contextmanager
def mlflow_server(store: Path):
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(store.parent / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert server.poll() is None, f"mlflow server exited with {server.returncode}"
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_the_ui_opens_on_runs_names_methods_and_models_and_says_the_gate_decisions(
    prefect_harness, tracked, demo_data_dir, tmp_path, capsys
):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = tmp_path / "mlflow.db"
    out = tmp_path / "results.json"
    overrides = [
        f"data.dir={demo_data_dir}", f"work_dir={tmp_path / 'work'}", f"tracking.tracking_uri=sqlite:///{store}",
        f"reports_dir={tmp_path / 'reports'}", "reward.max_steps=4", "cost.max_steps=4", "dpo.max_steps=2",
        "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.max_new_tokens=8",
        "rloo.max_steps=2", "rloo.batch_size=8", "rloo.max_new_tokens=8", "eval.max_new_tokens=8", "eval.base=true",
        # configs/cai/demo.yaml, its data in the test's folder and out of DVC, one critique round of short answers
        # (SFT trains its demo epochs: after one, the tiny model's revisions repeat its answers: no CAI data)
        (f"cai.overrides=[output_dir={tmp_path / 'data-cai'},dvc_add=false,critique.rounds=1,"
         "respond.max_new_tokens=16,critique.revision_max_new_tokens=16,rlaif.max_new_tokens=16]")]
    compare(config=paths.DEMO_CONFIG, out=out, overrides=overrides)
    printed = capsys.readouterr().out
    assert "| ppo | sft → reward → ppo |" in printed and f"report: {tmp_path / 'reports'}" in printed
    assert "| safe_ppo | sft → reward → cost → safe_ppo |" in printed
    assert "| rlaif-dpo | cai-data → cai-sft → cai-dpo |" in printed
    results = results_from_file(out)
    client = MlflowClient()
    parent_id = results["comparison"].run_id
    assert client.get_run(results["sft"].run_id).data.tags["mlflow.parentRunId"] == parent_id
    # One parent run holds every method, the CAI data steps and CAI's two models included.
    for name in ("ppo", "rloo", "cai-respond", "cai-rlaif", "cai-version", "cai-data", "cai-sft", "cai-dpo",
                 "evaluate-sl-cai", "evaluate-rlaif-dpo", "promote"):
        assert client.get_run(results[name].run_id).data.tags["mlflow.parentRunId"] == parent_id, name
    experiment_id = client.get_run(parent_id).info.experiment_id
    # With the base model evaluated, every method's win rate against it is in the comparison, judged by the
    # same reward model; CAI's models are gated with the others.
    comparison = {row["method"]: row for row in
                  mlflow.artifacts.load_dict(f"runs:/{parent_id}/comparison/comparison.json")}
    assert list(comparison) == ["base", "sft", "dpo", "ppo", "rloo", "safe_ppo", "sl-cai", "rlaif-dpo"]
    assert comparison["base"]["gates"] == "-" and comparison["base"]["demos"] == 0  # the untrained "before"
    for method, row in list(comparison.items())[1:]:
        assert row["win_rate_vs_base"] == results[f"evaluate-{method}"].metrics["eval/win_rate_vs_base"]
        assert 0.0 <= row["win_rate_vs_base"] <= 1.0
        assert row["wall_seconds"] > 0, method
    passed = results["promote"].metrics
    for method in ("sl-cai", "rlaif-dpo"):
        assert comparison[method]["gates"] == ("passed" if passed[f"gate/{method}/passed"] else "failed")
        assert comparison[method]["principles"] == 5 and comparison[method]["preference_pairs"] == 0
        # configs/cai/demo.yaml's answers come from the SFT model: the human demos behind it are counted
        assert comparison[method]["demos"] == comparison["sft"]["demos"] > 0
    # Generated tokens: none for SFT and DPO; PPO's rollouts (2 steps x 8 prompts x at most 8 tokens); CAI's
    # answers, critiques and revisions counted in its data steps.
    tokens = {method: row["generated_tokens"] for method, row in comparison.items()}
    assert tokens["sft"] == tokens["dpo"] == 0
    assert 0 < tokens["ppo"] <= 2 * 8 * 8 and 0 < tokens["rloo"]
    cai_steps = [results[f"cai-{step}"].metrics for step in ("respond", "critique_revise", "rlaif")]
    assert tokens["sl-cai"] == tokens["rlaif-dpo"] == sum(
        value for metrics in cai_steps for name, value in metrics.items() if name.endswith("/generated_tokens")) > 0

    with mlflow_server(store) as url, chromium("1400,1000") as driver:
        mlflow.set_tracking_uri(url)

        def shows(*texts: str) -> str:
            """The page's text once every one of `texts` is on it."""
            def body() -> str:
                return driver.find_element(By.TAG_NAME, "body").text
            try:
                WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(lambda _: all(t in body() for t in texts))
            except TimeoutException:
                pytest.fail(f"{driver.current_url} never showed all of {texts}; it shows:\n{body()[:3000]}")
            return body()

        def close_assistant() -> None:
            """MLflow's assistant panel takes a third of the window in screenshots."""
            for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
                button.click()

        # 1. The link the CLI prints opens the experiment on its runs, not on MLflow 3's GenAI traces overview.
        driver.get(ui_link(results["dpo"].run_id))
        shows("demo-comparison", "Run Name")
        assert "/overview" not in driver.current_url and "/traces" not in driver.current_url, driver.current_url
        # Expanded, the pipeline run lists a run per stage; the Dataset column names what each read, with its md5.
        driver.find_element(By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']").click()
        sft_md5 = results["data"].output_hashes["sft_train"]
        shows("evaluate-dpo", "evaluate-sft", f"sft_train ({sft_md5})", "sft_eval (", "preferences_train (")
        close_assistant()
        save_screenshot(driver, "mlflow-experiment.png", tmp_path)

        # 2. The pipeline run's description leads with the outcome; unfolded, it is the results table.
        driver.get(f"{url}/#/experiments/{experiment_id}/runs/{parent_id}{ML}")
        shows("Description", "harmful refusal", "Promoted: nothing")
        driver.find_element(By.XPATH, "//*[normalize-space(text())='Show more']").click()
        text = shows("dpo")
        assert "| dpo |" not in text, "the description shows markdown source instead of a table"
        dpo_row = next(line for line in text.splitlines() if line.startswith("dpo "))
        assert dpo_row.endswith(" failed"), dpo_row
        assert "Constitutional AI" in text and any(line.startswith("rlaif-dpo ") for line in text.splitlines())
        close_assistant()
        save_screenshot(driver, "mlflow-run.png", tmp_path)

        # 3. An evaluate run names its method, so runs can be grouped and coloured by it.
        driver.get(f"{url}/#/experiments/{experiment_id}/runs/{results['evaluate-dpo'].run_id}{ML}")
        shows("method", "dpo", "eval/harmful_refusal_rate")

        # 4. Logged models are named by config and stage, with their eval metrics, in the experiment's Models tab.
        driver.get(f"{url}/#/experiments/{experiment_id}/models{ML}")
        shows("demo-dpo", "demo-sft", "demo-reward")

        # 5. The registry says in each version's description what it is and what the gates decided. The list
        # cuts descriptions to about 30 characters, and renders only the columns in view: a wide window.
        driver.set_window_size(2400, 1000)
        driver.get(f"{url}/#/models/alignflow-policy{ML}")
        shows("DPO: failed harmful_refusal", "SFT: not gated yet", "SL-CAI: ", "RLAIF-DPO: ")
        save_screenshot(driver, "mlflow-registry.png", tmp_path)
        dpo_version = results["register-dpo"].outputs["version"]
        driver.get(f"{url}/#/models/alignflow-policy/versions/{dpo_version}{ML}")
        shows(client.get_model_version("alignflow-policy", dpo_version).description)

        # 6. The validation report, opened in the validate run's artifacts, leads with its summary.
        driver.set_window_size(1400, 1000)
        driver.get(f"{url}/#/experiments/{experiment_id}/runs/{results['data'].run_id}/artifacts/"
                   f"validation/report.html{ML}")
        WebDriverWait(driver, WAIT_S).until(lambda _: driver.find_elements(By.TAG_NAME, "iframe"),
                                            message="the artifact viewer shows no report")
        driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
        summary = WebDriverWait(driver, WAIT_S).until(lambda _: driver.find_elements(By.ID, "summary"),
                                                      message="the report has no #summary")[0]
        assert summary.text == "All 6 datasets passed."
        assert summary.location["y"] < driver.find_element(By.TAG_NAME, "h2").location["y"]
        assert "sft_train" in driver.find_element(By.TAG_NAME, "table").text

        # 7. The comparison report renders on its own: its plots load, every method answers the fixed prompts,
        # the lineage is there, and the console has no errors.
        driver.switch_to.default_content()
        driver.get_log("browser")  # what the MLflow pages logged: not the report's
        driver.get((tmp_path / "reports" / "demo-comparison.html").as_uri())
        shows("Methods side by side", "Data lineage", "data (DVC md5)", "constitution (sha256)")
        for plot in ("summary-plot", "curves-plot"):
            width = driver.execute_script(f"return document.getElementById('{plot}').naturalWidth")
            assert width > 0, f"{plot} did not load"
        answers = driver.find_elements(By.CSS_SELECTOR, "#answers-table tr")
        assert len(answers) == 1 + 4  # header, then two harmful and two benign prompts (the demo has no others)
        headers = [th.text for th in answers[0].find_elements(By.TAG_NAME, "th")]
        assert headers == ["prompt", "base", "sft", "dpo", "ppo", "rloo", "safe_ppo", "sl-cai", "rlaif-dpo"]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        save_screenshot(driver, "comparison-report.png", tmp_path)

    # 8. The same comparison again: every stage comes from the cache and the CAI steps resume every record, so
    # the rows keep the first run's wall times and tokens, and the CAI data's cost (an earlier run's) is unknown,
    # not zero.
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    again_out = tmp_path / "again.json"
    compare(config=paths.DEMO_CONFIG, out=again_out, overrides=overrides)
    again = results_from_file(again_out)
    assert [again[name].run_id for name in ("sft", "ppo", "cai-sft", "cai-dpo", "evaluate-sl-cai")] == [
        results[name].run_id for name in ("sft", "ppo", "cai-sft", "cai-dpo", "evaluate-sl-cai")]
    # The results name the new parent run; the CAI steps ran again (resuming) under it.
    again_parent = again["comparison"].run_id
    assert client.get_run(again["cai-respond"].run_id).data.tags["mlflow.parentRunId"] == again_parent
    assert again_parent != parent_id and again["cai-respond"].metrics["cai/responses_generated"] == 0
    rows = {row["method"]: row for row in
            mlflow.artifacts.load_dict(f"runs:/{again_parent}/comparison/comparison.json")}
    assert [rows[m]["wall_seconds"] for m in ("sft", "ppo")] == [comparison[m]["wall_seconds"] for m in ("sft", "ppo")]
    assert rows["ppo"]["generated_tokens"] == tokens["ppo"]
    assert rows["sl-cai"]["wall_seconds"] is None and rows["sl-cai"]["generated_tokens"] is None
