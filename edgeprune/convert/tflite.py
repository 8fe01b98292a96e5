"""PyTorch -> TFLite (fp32) through litert-torch, with NHWC input so the graph has no
TRANSPOSE (``to_channel_last_io`` folds the layout change into the converted graph)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from edgeprune._io import atomic_path
from edgeprune.convert._common import prepare
from edgeprune.convert._rewrite import hwc_flatten
from edgeprune.convert.ptq import check_ptq_steps, prepare_int8
from edgeprune.errors import ConfigError, ExportError, MissingDependencyError

log = logging.getLogger(__name__)


def to_tflite(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Export an fp32 .tflite whose input is NHWC (``example_input`` is given NCHW, as for
    PyTorch); a 4-D output is NHWC as well. Raises :class:`ExportError` if the graph still
    holds a TRANSPOSE."""
    try:
        import litert_torch
    except ImportError as e:
        raise MissingDependencyError("litert-torch is not installed; pip install edgeprune") from e
    wrapped, nhwc = _channel_last(litert_torch, model, example_input)
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with _quiet_converter():
                edge = litert_torch.convert(wrapped, (nhwc,))
                edge.export(str(tmp))
        except Exception as e:  # the converter raises many types; all mean "could not convert"
            raise ExportError(f"litert-torch conversion failed for {type(model).__name__}: {e}") from e
        _check_no_transpose(tmp)
    return path


def _channel_last(litert_torch, model: nn.Module, example_input: torch.Tensor
                  ) -> tuple[nn.Module, torch.Tensor]:
    """The export copy of ``model`` wrapped to take (and, for a 4-D output, give) NHWC, and
    the NHWC example input: the layout change is folded into the graph, no TRANSPOSE."""
    m, x = prepare(model, example_input)
    m = hwc_flatten(m, x)
    with torch.no_grad():
        out = m(x)
    # a 4-D output (a feature map) is made NHWC too, or the graph would end in a TRANSPOSE
    outputs = [0] if isinstance(out, torch.Tensor) and out.ndim == 4 else None
    try:
        with _quiet_converter():
            wrapped = litert_torch.to_channel_last_io(m, args=[0], outputs=outputs).eval()
    except Exception as e:  # litert-torch raises many types; all mean "could not convert"
        raise ExportError(f"litert-torch cannot make {type(model).__name__} channel-last: {e}") from e
    return wrapped, x.permute(0, 2, 3, 1).contiguous()


def _check_no_transpose(path: Path) -> None:
    ops = tflite_op_names(path)
    if "TRANSPOSE" in ops:
        raise ExportError(
            f"converted TFLite graph still has {ops.count('TRANSPOSE')} TRANSPOSE op(s) "
            f"(ops: {sorted(set(ops))}); the model has a layout-dependent op litert-torch "
            "cannot fold"
        )


INT8_LOGITS = ("top2", "full")


def check_int8_logits(logits: str, name: str = "logits") -> None:
    """Raise unless ``logits`` names an int8 output range (see :func:`to_tflite_int8`);
    ``name`` is the argument the caller was given it as."""
    if logits not in INT8_LOGITS:
        raise ConfigError(f"{name}={logits!r} is not an int8 output range; choose from {list(INT8_LOGITS)}")


def to_tflite_int8(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor,
                   calibration: Iterable, *, min_images: int = 100,
                   max_images: int = 1000, logits: str = "top2", ptq: Sequence[str] = (),
                   ptq_images: int = 256) -> Path:
    """Export a full-integer .tflite (int8 weights per channel, int8 activations, int8 NHWC
    input and output; read their scale/zero-point from the runtime session).

    Quantised with litert-torch's PT2E quantizer (symmetric per-channel weights, histogram
    activation observers) calibrated on ``calibration``: batches of normalised NCHW inputs
    (tensors, or tuples whose first element is the input), at least ``min_images`` images
    (the first ``max_images`` are used). Too few images raise :class:`ExportError`.

    ``logits`` sets the int8 range of the output. ``"full"`` keeps the observer's range,
    which covers every output value seen in calibration. ``"top2"`` (for classifiers; needs a
    ``(1, classes)`` output) covers only what decides the prediction: from the smallest
    second-largest logit to the largest logit seen per calibration image, widened by 5% of that
    span below. The step is finer where argmax and the top probabilities are decided; logits
    under the range saturate at its floor. With 256 levels over the full range, near-tied top
    logits round to the same value and argmax flips (see docs/export.md).

    ``ptq``: label-free steps applied to a copy of the model before quantisation, on the first
    ``ptq_images`` calibration images (``"cle"``, ``"adaround"``, ``"bias_correction"``; see
    :mod:`edgeprune.convert.ptq`).
    """
    quantized, quantizer, nhwc = _quantize_pt2e(model, example_input, calibration, min_images=min_images,
                                                max_images=max_images, logits=logits, ptq=ptq,
                                                ptq_images=ptq_images)
    import litert_torch  # importable: _quantize_pt2e checked
    from litert_torch.quantize.quant_config import QuantConfig

    path = Path(path)
    with _quiet_converter(), atomic_path(path) as tmp:
        try:
            edge = litert_torch.convert(quantized, (nhwc,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(tmp))
        except Exception as e:
            raise ExportError(f"int8 conversion failed for {type(model).__name__}: {e}") from e
        _check_no_transpose(tmp)
    return path


def simulate_int8(model: nn.Module, example_input: torch.Tensor, calibration: Iterable, *,
                  min_images: int = 100, max_images: int = 1000, logits: str = "top2",
                  ptq: Sequence[str] = (), ptq_images: int = 256,
                  weights: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """The int8 model :func:`to_tflite_int8` converts (same quantizer, calibration and
    ``logits`` range), run in PyTorch with quantize/dequantize steps instead of integer
    kernels: a function of a batch of normalised NCHW inputs. It approximates the runtime (its
    rounding and requantization differ), which :mod:`edgeprune.validation` measures instead; it
    serves to find where the int8 error comes from. ``weights=False`` leaves the weights in
    float, so only activations are rounded."""
    quantized, _, _ = _quantize_pt2e(model, example_input, calibration, min_images=min_images,
                                     max_images=max_images, logits=logits, ptq=ptq, ptq_images=ptq_images,
                                     weights=weights)

    def run(x: torch.Tensor) -> torch.Tensor:  # the exported graph has batch size 1
        with torch.no_grad():
            return torch.cat([quantized(x[i:i + 1].permute(0, 2, 3, 1).contiguous()) for i in range(len(x))])

    return run


def _quantize_pt2e(model: nn.Module, example_input: torch.Tensor, calibration: Iterable, *,
                   min_images: int, max_images: int, logits: str, ptq: Sequence[str], ptq_images: int,
                   weights: bool = True) -> tuple[torch.fx.GraphModule, object, torch.Tensor]:
    """(the calibrated PT2E model with quantize/dequantize nodes, its quantizer, the NHWC
    example input): what litert-torch converts to full int8."""
    check_int8_logits(logits)
    ptq = check_ptq_steps(ptq)
    try:
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as e:
        raise MissingDependencyError("litert-torch (with torchao) is not installed; pip install edgeprune") from e

    model, example_input = prepare(model, example_input)  # checks the example input
    images = _calibration_images(calibration, tuple(example_input.shape[1:]), max_images)
    if len(images) < min_images:
        raise ExportError(f"int8 calibration got {len(images)} images; need at least {min_images} "
                          "(pass more calibration data, e.g. --calib-data shapes --calib-images 200)")
    if ptq:
        model, _ = prepare_int8(model, images[:ptq_images], ptq)
    wrapped, nhwc = _channel_last(litert_torch, model, example_input)
    with _quiet_converter():
        try:
            graph = torch.export.export(wrapped, (nhwc,)).module()
            config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
            if not weights:
                config = dataclasses.replace(config, weight=None)
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
            observed = quantize_pt2e.prepare_pt2e(graph, quantizer)
        except Exception as e:  # the exporter raises many types; all mean "could not convert"
            raise ExportError(f"int8 preparation failed for {type(model).__name__}: {e}") from e
        top2 = []
        with torch.no_grad():
            for i in range(len(images)):  # the exported graph has batch size 1
                out = observed(images[i:i + 1].permute(0, 2, 3, 1).contiguous())
                if logits == "top2":
                    top2.append(_top2(out))
        if logits == "top2":
            _set_output_range(observed, torch.stack(top2))
        try:
            quantized = quantize_pt2e.convert_pt2e(observed, fold_quantize=False)
        except Exception as e:
            raise ExportError(f"int8 conversion failed for {type(model).__name__}: {e}") from e
    return quantized, quantizer, nhwc


def _calibration_images(calibration: Iterable, shape: tuple[int, ...], max_images: int) -> torch.Tensor:
    """The first ``max_images`` inputs of ``calibration``'s batches, checked against ``shape``."""
    from edgeprune.data import input_of

    got, n = [], 0
    for batch in calibration:
        xb = input_of(batch)
        if tuple(xb.shape[1:]) != shape:
            raise ExportError(f"calibration batch of shape {tuple(xb.shape)} does not match the "
                              f"model input {shape}; give normalised NCHW batches")
        got.append(xb[:max_images - n].detach().float())
        n += len(got[-1])
        if n >= max_images:
            break
    return torch.cat(got) if got else torch.zeros(0, *shape)


def _top2(out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExportError(f"int8 logits='top2' needs one classifier output of shape (1, classes); the model "
                          f"gives {shape}; export with logits='full' (CLI: --int8-logits full)")
    return out[0].topk(2).values


def _set_output_range(observed: torch.fx.GraphModule, top2: torch.Tensor) -> None:
    """Replace the observer of the graph's output by one fixed to [floor, largest logit]."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    out_node = next(n for n in observed.graph.nodes if n.op == "output")
    arg = out_node.args[0]
    node = arg[0] if isinstance(arg, (tuple, list)) and len(arg) == 1 else arg
    old = getattr(observed, str(node.target), None) if getattr(node, "op", None) == "call_module" else None
    if old is None or not hasattr(old, "quant_min"):
        raise ExportError("int8 logits='top2': the quantizer left the model output unobserved; "
                          "export with logits='full' (CLI: --int8-logits full)")
    hi, low = float(top2[:, 0].max()), float(top2[:, 1].min())
    floor = low - 0.05 * (hi - low)
    fixed = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min,
                           quant_max=old.quant_max, eps=float(old.eps))
    fixed(torch.tensor([floor, hi]))
    setattr(observed, str(node.target), fixed)


@contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints its own progress unless LITERT_TORCH_SHOW_PROGRESS=n; library code
    must not print, so switch it off for the conversion and restore the caller's setting."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def tflite_op_names(path: str | os.PathLike) -> list[str]:
    """The builtin op name of every operator in the flatbuffer's subgraphs, in order."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(buf, 0)
    except Exception as e:  # flatbuffers raises struct/index errors on garbage
        raise ExportError(f"{str(path)!r} is not a TFLite flatbuffer: {e}") from e
    code_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(code_names.get(code, f"CODE_{code}"))
    names = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            names.append(codes[sg.Operators(j).OpcodeIndex()])
    return names
