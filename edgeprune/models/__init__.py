"""Architectures edgeprune ships. Use :mod:`edgeprune.zoo` to create them by name."""

from edgeprune.models import mobilenetv2, resnet, vgg  # noqa: F401  (registers the models)
from edgeprune.models.registry import create, names, register

__all__ = ["create", "names", "register"]
