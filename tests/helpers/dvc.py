"""A DVC repository of its own for tests that need real DVC lineage, so no test writes the project's data/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tasks.core import paths

BIN = Path(sys.executable).parent


def dvc_repo_with_tracked_data(root: Path) -> Path:
    """`root` made a DVC repository holding the project's data.dvc and the demo data it tracks, regenerated and
    checked in as `alignflow data demo` does; returns its data folder."""
    from tasks.core.lineage import check_in_regenerated_data
    from tasks.data.demo import write_demo_data

    init_dvc_repo(root)
    data_dir = root / "data"
    write_demo_data(data_dir)
    check_in_regenerated_data(data_dir)  # a fresh DVC cache is empty: this is what stores the files in it
    return data_dir


def init_dvc_repo(root: Path) -> None:
    """A DVC repository (without git) at `root`, holding a copy of the project's data.dvc."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=root, check=True, capture_output=True)
    shutil.copyfile(paths.PROJECT_ROOT / paths.DATA_DVC_FILE, root / paths.DATA_DVC_FILE)
