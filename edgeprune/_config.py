"""Shared helper for frozen ``*Config`` dataclasses: ``from_dict`` that rejects unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from edgeprune.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} needs a dict, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
    return cls(**d)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
