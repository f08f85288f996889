"""Which process of a multi-process launch (`accelerate launch`, torchrun, mpirun) tracks, saves and reports.

Every process runs the stage, trains and joins the gathering of sharded weights before the final save: their
collectives must match. The main process alone takes the stage's
work-folder lock, opens its MLflow run, writes the final model, logs it and the metrics, and returns the stage's
result; the others track, save and log nothing (see `tasks.run.contract.stage_run`).
"""

from __future__ import annotations

from accelerate.utils import get_int_from_env

# The global rank, as accelerate reads it: torchrun's, then MPI launchers' (set before any process group exists).
_RANK_VARIABLES = ["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"]


def process_rank() -> int:
    """This process's global rank in a launch; 0 for a process started on its own."""
    return get_int_from_env(_RANK_VARIABLES, 0)


def is_main_process() -> bool:
    """Whether this is global rank 0 of a launch, or a process started on its own."""
    return process_rank() == 0
