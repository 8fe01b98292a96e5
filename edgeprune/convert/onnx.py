"""PyTorch -> ONNX through torch.onnx's exporter, checked by ``onnx.checker``."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeprune._io import atomic_path
from edgeprune.convert._common import prepare
from edgeprune.errors import ExportError, MissingDependencyError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


EXPORTERS = ("dynamo", "torchscript")


def to_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
            opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
            exporter: str = "dynamo") -> Path:
    """Export to ONNX (NCHW float input named ``input``, output ``logits``).

    ``exporter="dynamo"`` (default) is torch.onnx's current exporter with its graph optimiser.
    ``"torchscript"`` is the legacy tracer, ~20x faster on tiny graphs; the profiler uses it
    for single-layer models, whose graphs (Conv with folded BN, Relu) come out the same.
    """
    try:
        import onnx
    except ImportError as e:  # a core dependency, but say how to fix a broken install
        raise MissingDependencyError("onnx is not installed; pip install edgeprune") from e
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; use opset >= 17")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter {exporter!r} is unknown; use one of {EXPORTERS}")
    m, x = prepare(model, example_input)
    path = Path(path)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "torchscript":
                    torch.onnx.export(
                        m, (x,), str(tmp), dynamo=False, opset_version=opset,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                    )
                else:
                    prog = torch.onnx.export(
                        _Named(m), (x,), dynamo=True, opset_version=opset,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes=dynamic, verbose=False,
                    )
                    prog.optimize()
                    prog.save(str(tmp), external_data=False)
        except Exception as e:  # the exporter raises many types; all mean "could not export"
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from e
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"exported ONNX model fails onnx.checker: {e}") from e
    return path


class _Named(nn.Module):
    """Gives the traced input the argument name used in ``dynamic_shapes``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)
