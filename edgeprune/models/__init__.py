"""The architectures edgeprune ships (the zoo: ``create(name)``, ``names()``), and
checkpoints without pickle (``load``/``save``, :mod:`edgeprune.models.checkpoint`)."""

from edgeprune.models import mobilenetv2, resnet, vgg  # noqa: F401  (registers the models)
from edgeprune.models.registry import create, names, register

__all__ = ["create", "names", "register"]
