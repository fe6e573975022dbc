"""Recipe configuration: a dataclass schema merged with a YAML file and ``key=value`` CLI arguments.

    cfg = load_config(ToyConfig, sys.argv[1:])      # config=recipes/configs/toy.yaml train.steps=2000 ...

A misspelled key or a wrong type fails here, before any work, with omegaconf's message and the valid
keys; the merged configuration is saved into the run directory.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

__all__ = ["ConfigError", "load_config", "save_config"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that does not fit its schema; the message names the fix."""


def load_config(schema: type[T], argv: Sequence[str] | None = None) -> T:
    """Merges ``schema`` defaults, an optional ``config=FILE.yaml`` and ``key=value`` overrides.

    Args:
        schema: a dataclass type whose fields are the valid keys (nested dataclasses allowed).
        argv: command-line arguments (default ``sys.argv[1:]``); each is ``key=value``.

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: an unknown key, a wrong type, a missing file or an argument not of the form key=value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {Path(sys.argv[0]).name} [config=FILE.yaml] [key=value ...], e.g. {_example(schema)}\n\n"
              f"keys and their defaults:\n{OmegaConf.to_yaml(OmegaConf.structured(schema))}")
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        raise ConfigError(f"arguments must be key=value (omegaconf style), e.g. {_example(schema)}; got {bad}. "
                          f"Valid keys: {', '.join(f.name for f in dataclasses.fields(schema))}.")
    files = [a.split("=", 1)[1] for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    try:
        merged = OmegaConf.structured(schema)
        for file in files:
            if not Path(file).is_file():
                raise ConfigError(f"config file {file} does not exist; pass config=recipes/configs/<name>.yaml.")
            merged = OmegaConf.merge(merged, OmegaConf.load(file))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        key, first_line = getattr(error, "full_key", None), str(error).splitlines()[0]
        if isinstance(error, ValidationError) and key:  # a known key with a value of the wrong type
            raise ConfigError(f"{key}: {first_line}; give it a value of its type (see --help).") from None
        valid = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ConfigError(f"{error}\nValid keys of {schema.__name__}: {valid}.") from None


def _example(schema: type) -> str:
    """A real ``key=value`` of ``schema``: its first numeric leaf with the default value (dotted path)."""
    def walk(node: object, prefix: str) -> str | None:
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            if dataclasses.is_dataclass(value):
                found = walk(value, f"{prefix}{field.name}.")
                if found:
                    return found
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                return f"{prefix}{field.name}={value}"
        return None

    return walk(OmegaConf.to_object(OmegaConf.structured(schema)), "") or "key=value"


def save_config(config: object, path: str | Path) -> None:
    """Writes the resolved configuration as YAML (atomically)."""
    from .io import write_text_atomic

    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.structured(config)))
