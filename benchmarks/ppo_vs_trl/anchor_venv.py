"""The anchor: TRL 1.12 in its own venv, `benchmarks/.venv-trl112/`, made on first use and checked on every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .workload import REPO

ANCHOR_VENV = REPO / "benchmarks" / ".venv-trl112"
ANCHOR_PINS = ["trl==1.12.0", "transformers==4.57.6"]
TORCH_PIN = "torch==2.13.0"


def ensure_anchor_venv() -> Path:
    """The TRL 1.12 venv's python, making the venv first if it is missing."""
    python = ANCHOR_VENV / "bin" / "python"
    if not python.exists():
        print(
            f"creating {ANCHOR_VENV.relative_to(REPO)} (torch==2.13.0 CPU, {', '.join(ANCHOR_PINS)})",
            flush=True,
        )
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(ANCHOR_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run(
            [*pip, TORCH_PIN], check=True
        )  # first, alone: pip must not choose a torch build itself
        constraints = ANCHOR_VENV / "constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        subprocess.run([*pip, "-c", str(constraints), *ANCHOR_PINS], check=True)
    check = (
        "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)"
    )
    found = subprocess.run([str(python), "-c", check], check=False, capture_output=True, text=True)
    want = ("2.13.0", "4.57.6", "1.12.0")
    got = tuple(found.stdout.split())
    if found.returncode or len(got) != 3 or not all(g.startswith(w) for g, w in zip(got, want)):
        raise SystemExit(
            f"{ANCHOR_VENV} does not hold torch/transformers/trl {want} (found {got or found.stderr}); "
            "delete it and rerun to rebuild it"
        )
    return python
