"""Project paths, in one place. Relative paths in configs are resolved against the working directory."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = PROJECT_ROOT / "configs"
# One folder per config schema, so a file's place says what it is: pipelines name their CAI config and world.
PIPELINES_DIR = CONFIGS_DIR / "pipelines"
CAI_DIR = CONFIGS_DIR / "cai"
WORLDS_DIR = CONFIGS_DIR / "worlds"
DEMO_CONFIG = PIPELINES_DIR / "demo.yaml"
DATA_DIR = Path("data")
DATA_DVC_FILE = Path("data.dvc")
# Stage work folders (checkpoints, caches, quarantine files) live here, keyed by each stage's input hash.
WORK_DIR = Path(".alignflow")
REPORTS_DIR = Path("reports")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_ROOT = Path("mlartifacts")
