"""A single-layer .tflite derived at new widths from a converted template has the graph the
converter emits at those widths (ops, options, wiring, shapes, dtypes, constant sizes,
quantization layout), and runs; the structure comparison tells widths apart; a graph that
holds a template width in an option or a constant's values is refused."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgeprune.convert.tflite_resize import resize_tflite, tflite_structure
from edgeprune.errors import ExportError
from edgeprune.graph.layers import LayerUnit
from edgeprune.profiling.latency import _convert_point, _template_widths
from edgeprune.targets import load_target


def _unit(kind: str, stride: int = 1) -> LayerUnit:
    k, hw = (1, 1) if kind == "linear" else (3, 16)
    return LayerUnit(path="x", kind=kind, signature=kind, c_in=32, c_out=32, in_hw=(hw, hw),
                     out_hw=(hw // stride, hw // stride), kernel=(k, k), stride=(stride, stride),
                     padding=(k // 2, k // 2), dilation=(1, 1), fixed_in=False, fixed_out=False)


@pytest.mark.parametrize("target,kind,stride", [
    ("host-litert", "conv", 1), ("host-litert", "dwconv", 2), ("host-litert", "linear", 1),
    ("host-litert-int8", "conv", 2), ("host-litert-int8", "dwconv", 1),
])
def test_a_derived_layer_is_the_graph_the_converter_emits_at_that_width(tmp_path, target, kind, stride):
    t, u = load_target(target), _unit(kind, stride)
    ti, to = _template_widths(u)
    ci, co = (24, 24) if kind == "dwconv" else (24, 40)
    template = _convert_point(u, ti, to, t, tmp_path / "template.tflite")
    direct = _convert_point(u, ci, co, t, tmp_path / "direct.tflite")
    derived = resize_tflite(template, tmp_path / "derived.tflite", {ti: ci} if kind == "dwconv" else {ti: ci, to: co})
    assert tflite_structure(derived) == tflite_structure(direct)
    assert tflite_structure(derived) != tflite_structure(template)
    it = Interpreter(str(derived), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["shape"][-1] == ci
    it.set_tensor(inp["index"], np.ones(inp["shape"], inp["dtype"]))
    it.invoke()
    assert it.get_tensor(out["index"]).shape[-1] == co


def test_the_structure_tells_widths_apart_and_leaves_values_out(tmp_path):
    t, u = load_target("host-litert"), _unit("conv")
    ti, to = _template_widths(u)
    template = _convert_point(u, ti, to, t, tmp_path / "template.tflite")
    a = resize_tflite(template, tmp_path / "a.tflite", {ti: 24, to: 40})
    b = resize_tflite(template, tmp_path / "b.tflite", {ti: 24, to: 48})
    c = resize_tflite(a, tmp_path / "c.tflite", {7: 9})  # no dimension is 7: same graph, same bytes
    assert tflite_structure(a) != tflite_structure(b)
    assert tflite_structure(a) == tflite_structure(c) and a.read_bytes() == c.read_bytes()


def test_a_template_width_outside_a_dimension_is_refused(tmp_path):
    """A width that is also an option's value or a constant's value could not be told from a
    channel count: a strided depthwise layer has padding/activation options of 1 and an
    explicit PAD whose constant holds paddings of 1."""
    t, u = load_target("host-litert"), _unit("dwconv", stride=2)
    ti, _ = _template_widths(u)
    template = _convert_point(u, ti, 0, t, tmp_path / "template.tflite")
    with pytest.raises(ExportError, match="holds a template width"):
        resize_tflite(template, tmp_path / "bad.tflite", {ti: 24, 1: 5})
    assert not (tmp_path / "bad.tflite").exists()
