"""The human path of a feedback round through a real Label Studio, started on loopback from its own virtualenv
(.venv-labelstudio, infra/install_labelstudio.sh): create the project with our labelling config, import our
export, submit annotations as its Pairwise control writes them, export the project as JSON, and
`alignflow feedback import` that file into a new DVC data version."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from mlflow import MlflowClient

from tasks.core.lineage import dvc_data_md5
from tasks.core.tags import DATA_MD5_TAG, STAGE_TAG
from tasks.feedback.formats import LABELSTUDIO_CONFIG, LABELSTUDIO_TASKS
from tests.helpers.feedback import check_version, demo_pairs, export_from_tiny_policy, import_labels
from tests.helpers.services import REPO, LoopbackServices, free_port

pytestmark = [pytest.mark.slow, pytest.mark.heavy(2)]

LABEL_STUDIO = REPO / ".venv-labelstudio" / "bin" / "label-studio"
LABELLER = "labeller@example.com"
# The server phones nobody: no error reports to Sentry, no check of PyPI for a newer release.
OFFLINE = {"SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false"}


@dataclass
class LabelStudio:
    url: str
    token: str

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """A request to the REST API with the user's token; any error status fails the test with its body."""
        response = requests.request(method, f"{self.url}/api{path}", timeout=60,
                                    headers={"Authorization": f"Token {self.token}"}, **kwargs)
        assert response.ok, f"{method} {path}: HTTP {response.status_code}\n{response.text[:2000]}"
        return response


@pytest.fixture(scope="module")
def label_studio_and_export(tmp_path_factory) -> Iterator[tuple[LabelStudio, tuple]]:
    """`label-studio start` on 127.0.0.1 with a fresh data folder and a user made from the command line, and an
    export to label (`export_from_tiny_policy`). The export is made while the server migrates its new database
    (about a minute each: they overlap). The server's process group is stopped when the module ends, whatever
    happened."""
    if not LABEL_STUDIO.is_file():
        pytest.fail(f"the Label Studio round trip needs {LABEL_STUDIO.relative_to(REPO)}: `make test` installs it "
                    "(infra/install_labelstudio.sh)", pytrace=False)
    root = tmp_path_factory.mktemp("label-studio")
    processes = LoopbackServices(root)  # its process handling: own group, log file, stop on exit
    port, token = free_port(), secrets.token_hex(20)
    # --user-token sets the user's legacy API token, which 1.23 accepts only when the organisation enables it.
    command = [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--username", LABELLER, "--password", secrets.token_urlsafe(16), "--user-token", token,
               "--enable-legacy-api-token"]
    # Its data folder by the environment: --data-dir is read after its settings made ~/.local/share/label-studio.
    env = {**os.environ, **OFFLINE, "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data")}
    try:
        server = processes.spawn("label-studio", command, env=env)
        exported = export_from_tiny_policy(tmp_path_factory.mktemp("round"), n=16)
        url = f"http://127.0.0.1:{port}"
        seconds = processes.wait_until(server, lambda: requests.get(f"{url}/health", timeout=5).ok, timeout=300)
        studio = LabelStudio(url, token)
        print(f"Label Studio {studio.api('GET', '/version').json()['release']} up {seconds:.1f} s after its start")
        yield studio, exported
    finally:
        for service in processes.services:
            print(f"--- {service.name} log tail ---\n{service.output()[-3000:]}")
        processes.stop()


def _pairwise(side: str) -> list[dict]:
    """The result Label Studio's Pairwise control submits on a click: from_name and to_name are both the control's
    name, and value.selected is left (the first toName object, answer1) or right."""
    return [{"id": secrets.token_urlsafe(6), "from_name": "comparison", "to_name": "comparison", "type": "pairwise",
             "origin": "manual", "value": {"selected": side}}]


def test_a_feedback_round_through_label_studio(label_studio_and_export):
    label_studio, (root, args, export, _) = label_studio_and_export
    started = time.perf_counter()
    project = label_studio.api("POST", "/projects/", json={
        "title": "alignflow feedback round", "label_config": (export / LABELSTUDIO_CONFIG).read_text()}).json()
    with (export / LABELSTUDIO_TASKS).open("rb") as tasks_file:  # as the UI's Import uploads it
        imported = label_studio.api("POST", f"/projects/{project['id']}/import", params={"return_task_ids": "true"},
                                    files={"file": (LABELSTUDIO_TASKS, tasks_file, "application/json")}).json()
    tasks = json.loads((export / LABELSTUDIO_TASKS).read_text())
    assert imported["task_count"] == len(tasks) >= 8

    # The labeller: the first task skipped, the last left alone, the rest clicked left and right in turn, and the
    # second one revised (left, then right) as a changed mind updates the same annotation.
    expected: dict[str, str] = {}
    pair_ids = [label_studio.api("GET", f"/tasks/{task_id}/").json()["data"]["pair_id"]
                for task_id in imported["task_ids"]]
    for i, (task_id, pair_id) in enumerate(zip(imported["task_ids"][:-1], pair_ids, strict=False)):
        if i == 0:
            label_studio.api("POST", f"/tasks/{task_id}/annotations/", params={"project": project["id"]},
                             json={"result": [], "was_cancelled": True, "lead_time": 2.0})
            continue
        side = "left" if i % 2 else "right"
        annotation = label_studio.api("POST", f"/tasks/{task_id}/annotations/", params={"project": project["id"]},
                                      json={"result": _pairwise(side), "was_cancelled": False, "lead_time": 4.5})
        if i == 1:
            side = "right"
            label_studio.api("PATCH", f"/annotations/{annotation.json()['id']}/", json={"result": _pairwise(side)})
        expected[pair_id] = "A" if side == "left" else "B"
    assert set(expected.values()) == {"A", "B"}  # both sides picked: a reader that swapped them cannot pass

    exported = label_studio.api("GET", f"/projects/{project['id']}/export", params={"exportType": "JSON"}).json()
    labels = root / "label-studio-export.json"
    labels.write_text(json.dumps(exported, ensure_ascii=False))
    output, folder = import_labels(root, args, labels, export, "round-label-studio")
    round_trip_s = time.perf_counter() - started
    print(f"Label Studio round trip (project, import, {len(expected) + 1} annotations, export, alignflow import): "
          f"{round_trip_s:.1f} s")

    # Label Studio exports the labelled tasks only; the one left alone counts as unlabelled.
    assert len(exported) == len(tasks) - 1
    assert (f"{len(expected)} preference pairs from {len(expected) + 1} labelstudio labels on {len(tasks)} pairs: "
            "dropped 0 ties, 1 skips, 0 disagreements; 1 unlabelled; 1 annotators") in output
    manifest = check_version(folder, export, expected, demo_pairs(root))
    assert manifest["export"]["format"] == "labelstudio"

    # MLflow: the import's run, with the data version it made and its counts.
    (run_id,) = re.findall(r"MLflow run (\w+)", output)
    run = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags[STAGE_TAG] == "feedback-import" and run.data.tags[DATA_MD5_TAG] == dvc_data_md5(folder)
    assert run.data.params["feedback.format"] == "labelstudio"
    assert (run.data.metrics["feedback/kept"], run.data.metrics["feedback/skips"]) == (len(expected), 1)
