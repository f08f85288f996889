"""The flow a worker runs for one dispatched stage (deployments `alignflow-stage/<pool>` in infra/prefect.yaml)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run

from flows.cli.common import skip_collection_at_exit
from tasks.core.errors import ConfigError
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.dispatch import StageRequest, publish_result
from tasks.run.contract import StageResult


@flow(name="alignflow-stage", flow_run_name="{request[stage]}")
def stage_flow(request: dict[str, Any]) -> dict[str, Any]:
    """Run one pipeline stage on this worker and hand its result back through MLflow.

    Steps:
    1. run: the stage function, in this process, or under `accelerate launch` on all of this machine's GPUs
       when `dispatch.accelerate` names an accelerate config for the stage.
    2. publish: attach the StageResult to the stage's MLflow run, where the pipeline that sent it reads it.
    """
    install_log_redaction()
    skip_collection_at_exit()  # a worker runs each flow run in a process of its own, which exits after it
    stage_request = StageRequest.model_validate(request)
    launch_config = stage_request.config.get("dispatch", {}).get("accelerate", {}).get(stage_request.stage)
    logger = get_run_logger()
    logger.info("Stage %s on %s%s", stage_request.stage, deployment.get_name() or "this process",
                f", with accelerate launch --config_file {launch_config}" if launch_config else "")
    result = launch(stage_request, launch_config) if launch_config else stage_request.run()
    deployed_as = deployment.get_name()
    publish_result(result, flow_run.get_id(), deployed_as and f"{flow_run.get_flow_name()}/{deployed_as}")
    logger.info("Stage %s done: MLflow run %s, model %s", result.stage, result.run_id, result.model_uri)
    return result.model_dump()


def launch(request: StageRequest, accelerate_config: str) -> StageResult:
    """Run the stage in `accelerate launch` processes (DDP, FSDP or DeepSpeed, as the config says)."""
    if not Path(accelerate_config).is_file():
        raise ConfigError(f"dispatch.accelerate.{request.stage}: {accelerate_config} does not exist on this worker "
                          f"(working directory {Path.cwd()})")
    with tempfile.TemporaryDirectory(prefix=f"alignflow-{request.stage}-") as scratch:
        request_file, result_file = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_file.write_text(request.model_dump_json())
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                   "-m", "flows.stage_entry", "--request", str(request_file), "--out", str(result_file)]
        subprocess.run(command, check=True)
        return StageResult.model_validate_json(result_file.read_text())
