"""Kernel configuration: `default_config.json` beside this file, overridden by a user JSON and flags.

Light on purpose (no numpy, no torch): `python -m kernel` reads it before `--block-network` has run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.json")


class SettingsError(ValueError):
    """A kernel setting, path or input file is unusable; the message names it and the fix."""


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults, then the keys of the JSON at `path`, then `overrides` that are not None."""
    config = json.loads(DEFAULT_CONFIG_PATH.read_text())
    if path is not None:
        config.update(_checked(read_config_file(Path(path)), config, str(path)))
    config.update(_checked({k: v for k, v in overrides.items() if v is not None}, config, "overrides"))
    return config


def read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object of a `--config` file; `SettingsError` if it is missing, not JSON or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise SettingsError(f"--config {path}: file not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"--config {path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: expected a JSON object of kernel settings, got {type(data).__name__}")
    return data


def _checked(update: dict[str, Any], known: dict[str, Any], origin: str) -> dict[str, Any]:
    unknown = sorted(set(update) - set(known))
    if unknown:
        raise SettingsError(f"{origin}: unknown kernel config keys {unknown}; known keys: {sorted(known)}")
    return update
