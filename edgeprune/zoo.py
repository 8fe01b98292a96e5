"""The model zoo: ``edgeprune.zoo.create(name)`` and ``edgeprune.zoo.names()``."""

from edgeprune.models import create, names, register

__all__ = ["create", "names", "register"]
