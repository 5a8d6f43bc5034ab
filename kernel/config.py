"""Kernel configuration: `default_config.json` beside this file, overridden by a user JSON and flags."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.json")


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults, then the keys of the JSON at `path`, then `overrides` that are not None."""
    config = json.loads(DEFAULT_CONFIG_PATH.read_text())
    if path is not None:
        config.update(_checked(json.loads(Path(path).read_text()), config, str(path)))
    config.update(_checked({k: v for k, v in overrides.items() if v is not None}, config, "overrides"))
    return config


def _checked(update: dict[str, Any], known: dict[str, Any], origin: str) -> dict[str, Any]:
    unknown = sorted(set(update) - set(known))
    if unknown:
        raise KeyError(f"{origin}: unknown kernel config keys {unknown}; known keys: {sorted(known)}")
    return update
