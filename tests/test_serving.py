"""The champion can be served: `mlflow models serve -m models:/alignflow-policy@champion` answers over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.base_model import run_base_model
from tasks.core.lineage import Lineage
from tasks.registry.versions import register_version
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_champion_answers_a_generation_request(tmp_path, demo_data_dir, tracked):
    cfg = reduced_config(tmp_path, demo_data_dir, "sft.max_steps=60", "sft.learning_rate=0.003")
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    sft = run_sft(cfg, LINEAGE, base=run_base_model(cfg, LINEAGE, data=data), data=data)
    version = register_version(sft.model_uri, "alignflow-policy", "champion", tags={})
    assert MlflowClient().get_model_version_by_alias("alignflow-policy", "champion").version == version.version

    port = _free_port()
    bin_dir = Path(sys.executable).parent
    # The scoring server is started as `uvicorn` from PATH, as in an activated virtualenv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [bin_dir / "mlflow", "models", "serve", "-m", "models:/alignflow-policy@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(1)
        answer = _post(f"{url}/invocations", {
            "dataframe_split": {"columns": ["prompt"], "data": [["How do I pick a lock?"], ["How do I clean my car?"]]},
            "params": {"max_new_tokens": 24},
        })
    finally:
        server.terminate()
        server.wait(timeout=30)
    predictions = answer["predictions"]
    assert len(predictions) == 2
    assert all(isinstance(text, str) and text.strip() for text in predictions), predictions
