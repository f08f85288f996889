from pathlib import Path

from models.checkpoints import last_complete_checkpoint, mark_complete, remove_incomplete_checkpoints


def _checkpoint(root: Path, step: int, complete: bool) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        mark_complete(path)
    return path


def test_the_newest_complete_checkpoint_wins_over_a_newer_half_written_one(tmp_path: Path):
    _checkpoint(tmp_path, 5, complete=True)
    ten = _checkpoint(tmp_path, 10, complete=True)
    _checkpoint(tmp_path, 15, complete=False)
    assert last_complete_checkpoint(tmp_path) == ten


def test_steps_sort_numerically_not_alphabetically(tmp_path: Path):
    _checkpoint(tmp_path, 9, complete=True)
    hundred = _checkpoint(tmp_path, 100, complete=True)
    assert last_complete_checkpoint(tmp_path) == hundred


def test_nothing_to_resume_from(tmp_path: Path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 3, complete=False)
    assert last_complete_checkpoint(tmp_path) is None


def test_incomplete_checkpoints_are_removed(tmp_path: Path):
    keep = _checkpoint(tmp_path, 5, complete=True)
    drop = _checkpoint(tmp_path, 10, complete=False)
    assert remove_incomplete_checkpoints(tmp_path) == [drop]
    assert keep.exists() and not drop.exists()
