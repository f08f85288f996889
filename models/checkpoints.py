"""Which checkpoints are safe to resume from.

A checkpoint folder counts only once it holds the `COMPLETE` marker, which is written after every file of the
checkpoint is on disk. A run killed mid-save leaves a folder without the marker; it is never loaded.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from models.failpoints import failpoint
from models.saving import partial_path, write_atomically

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: Path) -> None:
    (checkpoint_dir / COMPLETE_MARKER).write_text("ok\n")


def is_complete(checkpoint_dir: Path) -> bool:
    return (checkpoint_dir / COMPLETE_MARKER).is_file()


def _checkpoints_by_step(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_DIR.match(p.name))]
    return sorted(found)


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every completely written checkpoint under `run_dir`, oldest first."""
    return [(step, path) for step, path in _checkpoints_by_step(run_dir) if is_complete(path)]


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step checkpoint under `run_dir` that was completely written, or None."""
    complete = complete_checkpoints(run_dir)
    return complete[-1][1] if complete else None


def remove_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoints so the trainer's own rotation never counts them. Returns what was removed."""
    removed = [path for _, path in _checkpoints_by_step(run_dir) if not is_complete(path)]
    for path in removed:
        shutil.rmtree(path)
    return removed


class StepFailpoint(TrainerCallback):
    """`failpoint("<stage>.step")` after every optimizer step (see `models.failpoints`)."""

    def __init__(self, stage: str):
        self.name = f"{stage}.step"

    def on_step_end(self, args, state, control, **kwargs):
        failpoint(self.name)
        return control


class MarkCompleteCheckpoints(TrainerCallback):
    """Writes the marker once the Trainer has finished writing a checkpoint (`on_save` runs after the save)."""

    def on_save(self, args, state, control, **kwargs):
        failpoint("checkpoint.write")
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


def save_complete_checkpoint(run_dir: Path, step: int, save) -> Path:
    """Write a checkpoint through `save(folder)`, marked complete, as `checkpoint-<step>`.

    It is written aside and renamed, so a crash at any point leaves either no `checkpoint-<step>` folder or a
    complete one.
    """

    def write(folder: Path) -> None:
        save(folder)
        failpoint("checkpoint.write")
        mark_complete(folder)

    return write_atomically(run_dir / f"checkpoint-{step}", write)


def save_complete_state(accelerator, run_dir: Path, step: int) -> Path:
    """`accelerator.save_state` as the complete checkpoint `checkpoint-<step>`; every process of a launch calls it.

    accelerate writes the weights and optimizer from the main process and each process's RNG state from that
    process, all into one folder. The main process writes it aside, marks it complete and renames it into place
    (`save_complete_checkpoint`); the others write their part in between, once the folder is ready for them.
    """

    def save(folder: Path) -> None:
        accelerator.wait_for_everyone()  # the main process has cleared any leftover: the others may write
        accelerator.save_state(str(folder))
        accelerator.wait_for_everyone()  # every part is written: the main process may mark it complete

    if accelerator.is_main_process:
        return save_complete_checkpoint(run_dir, step, save)
    final = run_dir / f"checkpoint-{step}"
    save(partial_path(final))
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and any `.partial` leftovers."""
    for leftover in run_dir.glob("checkpoint-*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    complete = [path for _, path in complete_checkpoints(run_dir)]
    for path in complete[:-keep]:
        shutil.rmtree(path)
