"""A name -> factory registry for the model zoo.

Every factory takes ``num_classes`` and ``in_channels`` keyword arguments. ``create`` records
the name and arguments on the model (``model.edgeprune_arch``) so a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgeprune.errors import ConfigError, ModelNotFoundError

ARCH_ATTR = "edgeprune_arch"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory to the zoo; a second factory under one name is refused."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ConfigError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    """The names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised zoo model by name."""
    if name not in _REGISTRY:
        raise ModelNotFoundError(
            f"unknown model {name!r}; known: {', '.join(names())}"
        )
    if int(num_classes) < 2:
        raise ConfigError(f"num_classes={num_classes} is invalid; need at least 2 classes")
    if int(in_channels) < 1:
        raise ConfigError(f"in_channels={in_channels} is invalid; need at least 1 channel")
    kwargs = {"num_classes": int(num_classes), "in_channels": int(in_channels)}
    model = _REGISTRY[name](**kwargs)
    setattr(model, ARCH_ATTR, {"name": name, "kwargs": kwargs})
    return model
