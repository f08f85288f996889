"""The MLflow UI and the comparison report tell what a pipeline run did, without a guide: `alignflow compare` on
the demo, a real `mlflow server` on its store, and headless Chromium on the pages a user opens first (the
experiment, the pipeline run, the registry) and on the report.

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
    compare(config=paths.DEMO_CONFIG, out=out, overrides=[
        f"data.dir={demo_data_dir}", f"work_dir={tmp_path / 'work'}", f"tracking.tracking_uri=sqlite:///{store}",
        f"reports_dir={tmp_path / 'reports'}", "sft.epochs=1", "reward.max_steps=4", "dpo.max_steps=2",
        "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.max_new_tokens=8",
        "rloo.max_steps=2", "rloo.batch_size=8", "rloo.max_new_tokens=8", "eval.max_new_tokens=8", "eval.base=true"])
    printed = capsys.readouterr().out
    assert "| ppo | sft → reward → ppo |" in printed and f"report: {tmp_path / 'reports'}" in printed
    results = results_from_file(out)
    client = MlflowClient()
    parent_id = client.get_run(results["sft"].run_id).data.tags["mlflow.parentRunId"]
    experiment_id = client.get_run(parent_id).info.experiment_id
    # With the base model evaluated, every method's win rate against it is in the comparison.
    comparison = mlflow.artifacts.load_dict(f"runs:/{parent_id}/comparison/comparison.json")
    assert [row["method"] for row in comparison] == ["sft", "dpo", "ppo", "rloo"]
    for row in comparison:
        assert row["win_rate_vs_base"] == results[f"evaluate-{row['method']}"].metrics["eval/win_rate_vs_base"]
        assert 0.0 <= row["win_rate_vs_base"] <= 1.0

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
        shows("demo-pipeline", "Run Name")
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
        shows("DPO: failed harmful_refusal", "SFT: not gated yet")
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
        shows("Methods side by side", "Data lineage", "data (DVC md5)")
        for plot in ("summary-plot", "curves-plot"):
            width = driver.execute_script(f"return document.getElementById('{plot}').naturalWidth")
            assert width > 0, f"{plot} did not load"
        answers = driver.find_elements(By.CSS_SELECTOR, "#answers-table tr")
        assert len(answers) == 1 + 4  # header, then two harmful and two benign prompts (the demo has no others)
        assert [th.text for th in answers[0].find_elements(By.TAG_NAME, "th")] == ["prompt", "sft", "dpo", "ppo",
                                                                                    "rloo"]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        save_screenshot(driver, "comparison-report.png", tmp_path)
