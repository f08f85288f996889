"""Publishing generated datasets as a new data version: one folder with a manifest, then `dvc add`.

Shared by the flows that make data (Constitutional AI, the safety world), so both guard the folder and
version it the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tasks.core.errors import AlignflowError


class OutputFolderError(AlignflowError):
    """The output folder cannot be (re)written or versioned."""


def publish(files: dict[str, Path], output_dir: Path, manifest: str, what: str) -> Path:
    """Replace the folder's contents with `files`; refuse a folder holding anything but an earlier output of the
    same kind (one with a `manifest` file), so a mistyped path never wipes someone's data."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / manifest).is_file():
        raise OutputFolderError(f"output_dir {output_dir} exists and is not a {what} output folder (no {manifest}); "
                                "choose an empty or new folder")
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    for path in files.values():
        shutil.copyfile(path, output_dir / path.name)
    return output_dir


def dvc_add(folder: Path) -> str:
    """`dvc add` the folder in the DVC repository that contains it; returns the md5 DVC recorded."""
    # Imported here: DVC is slow to import and only this step needs it.
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    folder = Path(folder).resolve()
    try:
        root = Repo.find_root(str(folder))
        with Repo(root) as repo:
            repo.add(str(folder))
    except NotDvcRepoError:
        raise OutputFolderError(f"output_dir {folder} is not inside a DVC repository: run `dvc init` there, or "
                                "set dvc_add: false") from None
    except DvcException as err:
        raise OutputFolderError(f"dvc add {folder} failed: {err}") from None
    dvc_file = folder.with_name(folder.name + ".dvc")
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])
