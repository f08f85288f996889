"""Config files: YAML read as a mapping, `extends:` merged, `--set a.b=c` applied, validated with key paths.

Shared by every config schema (the pipeline's, the CAI flow's and the safety world's): `load_config_file` is the
one way a config file is read, so every schema follows `extends:` and reports problems the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.core.errors import ConfigError
from tasks.core.secrets import redact, redact_mapping


class Section(BaseModel):
    """A config section: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HashableConfig(Section):
    """A top-level config that can hash its sections and flatten itself into MLflow params."""

    _param_prefix: ClassVar[str] = ""
    _unhashed_sections: ClassVar[tuple[str, ...]] = ()  # settings that cannot change any output

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all of them, less the unhashed ones, when none are named)."""
        dump = self.model_dump(mode="json")
        chosen = ({name: dump[name] for name in sections} if sections
                  else {name: value for name, value in dump.items() if name not in self._unhashed_sections})
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()

    def flat_params(self) -> dict[str, str]:
        """The resolved config as dotted keys, for MLflow params; credentials in values are masked."""
        return {f"{self._param_prefix}{key}": redact(str(value))
                for key, value in flatten(self.model_dump(mode="json")).items()}

    def redacted_dump(self) -> dict[str, Any]:
        """The resolved config as plain data with credentials masked: what may be logged or shown."""
        return redact_mapping(self.model_dump(mode="json"))


_Model = TypeVar("_Model", bound=BaseModel)


def validate_model(schema: type[_Model], raw: dict[str, Any], source: str) -> _Model:
    """Validate `raw` against `schema`; every problem is reported with its key path."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"]) or "<root>"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"key '{key}': {message}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} file {path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config_file(schema: type[_Model], path: Path | str, overrides: list[str] | None = None, *,
                     what: str = "config") -> _Model:
    """Read a config file of `schema` (following `extends:`), apply `key.path=value` overrides and validate it."""
    raw = read_config_tree(Path(path), what=what)
    for override in overrides or []:
        apply_override(raw, override)
    return validate_model(schema, raw, str(path))


def resolved_sha256(path: Path | str, what: str = "config") -> str:
    """sha256 of a config file as resolved (`extends:` merged): it changes when the file or any file it extends
    does, and not when only formatting or comments do."""
    tree = read_config_tree(Path(path), what=what)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def read_config_tree(path: Path, seen: tuple[Path, ...] = (), what: str = "config") -> dict[str, Any]:
    """A config file merged over the file it `extends:` (relative to its own folder), the child winning.

    Variants of a pipeline are a few lines over their base, never copies of it.
    """
    raw = read_yaml_mapping(path, what)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise ConfigError(f"{what} file {path}: 'extends' loops back to {base_path}")
    return _merge(read_config_tree(base_path, (*seen, path.resolve()), what), raw)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in child.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}': expected key.path=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': key '{part}' is not a section")
        node = child
    node[leaf] = yaml.safe_load(value) if value else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
