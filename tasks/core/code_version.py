"""What a cache key knows of the code: the source a module runs and the libraries that compute its result.

Every cache in the project (a stage's key, the safety world, a CAI step's progress folder, DPO's reference
log-probs) names its code through `code_version(module)`. That covers the module's own source and, transitively,
every project module it imports, read statically from the source (imports inside functions count too), plus the
versions of the libraries whose numerics make the result. An edit therefore invalidates exactly the caches whose
code it touches: a docstring in `tasks/cai/` leaves SFT's cache hit, an edit to `models/losses.py` misses PPO's.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
from functools import cache, lru_cache
from pathlib import Path

from tasks.core import paths

PROJECT_PACKAGES = ("flows", "tasks", "models")
# The libraries whose versions change what a stage computes (weights, tokens, log-probs), not only how fast.
RESULT_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf")


def code_version(module: str, root: Path | None = None) -> str:
    """sha256 over the source of `module` and every project module it imports, and the result libraries' versions.

    Computed once per process and source tree (`root`, the project by default): the code a process runs does not
    change under it.
    """
    return _code_version(module, root or paths.PROJECT_ROOT)


@cache
def _code_version(module: str, root: Path) -> str:
    digest = hashlib.sha256()
    for name in module_closure(module, root):
        digest.update(name.encode() + b"\0" + _source_file(name, root).read_bytes() + b"\0")
    for library, version in library_versions().items():
        digest.update(f"{library}=={version}\n".encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """The installed version of each result library ('absent' for one that is not installed)."""
    versions = {}
    for library in RESULT_LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = "absent"
    return versions


def module_closure(module: str, root: Path | None = None) -> tuple[str, ...]:
    """`module` and every project module it imports, transitively, sorted: what importing it runs.

    A module's packages count too (importing `tasks.cai.steps` runs `tasks/__init__.py` and
    `tasks/cai/__init__.py`). Library imports are left out: their versions stand for them.
    """
    root = root or paths.PROJECT_ROOT
    if _source_file(module, root) is None:
        raise ValueError(f"{module!r} is not a module of this project (looked under {root})")
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_packages_of(name, root))
        pending.extend(_imports(name, root))
    return tuple(sorted(seen))


def _source_file(module: str, root: Path) -> Path | None:
    """The file a project module lives in, or None for a name that is no project module (a function, a library)."""
    if module.split(".", 1)[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _packages_of(module: str, root: Path) -> list[str]:
    parts = module.split(".")
    return [name for i in range(1, len(parts)) if _source_file(name := ".".join(parts[:i]), root)]


def _imports(module: str, root: Path) -> list[str]:
    """The project modules that `module`'s source imports, anywhere in the file."""
    path = _source_file(module, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.module, node.level)
            found.append(base)
            # `from package import name`: the name may be a submodule.
            found.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return [name for name in found if _source_file(name, root)]


def _absolute(module: str, is_package: bool, target: str | None, level: int) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    if level == 0:
        return target or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (level - 1)]
    return ".".join(anchor + ([target] if target else []))
