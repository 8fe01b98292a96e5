"""Graph rewrites that make a PyTorch model convert to a clean NHWC graph.

``hwc_flatten``: a CNN that flattens a C x H x W map into a Linear (VGG-style heads) reads the
features in CHW order; in an NHWC graph that forces a TRANSPOSE before the RESHAPE. Flattening
in HWC order and permuting the Linear's input columns the same way computes the same function
with no TRANSPOSE. Only the exporter's private copy of the model is rewritten.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

log = logging.getLogger(__name__)

_FLATTEN_FUNCS = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def hwc_flatten(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Return ``model`` rewritten to flatten in HWC order before Linear layers, or ``model``
    itself when it has no such flatten or cannot be traced symbolically (the converter then
    sees the original graph, and a TRANSPOSE that remains is reported by its check)."""
    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(example)
    except Exception as e:  # tracing arbitrary user code can fail in any way
        log.debug("hwc_flatten: %s is not symbolically traceable (%s); left as is",
                  type(model).__name__, e)
        return model
    changed = False
    for node in list(gm.graph.nodes):
        src = _flattened_map(node)
        if src is None:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        linear = gm.get_submodule(str(users[0].target))
        if not isinstance(linear, nn.Linear):
            continue
        _, c, h, w = src.meta["tensor_meta"].shape
        with torch.no_grad():
            cols = linear.weight.view(linear.out_features, c, h, w).permute(0, 2, 3, 1)
            linear.weight.copy_(cols.reshape(linear.out_features, -1))
        with gm.graph.inserting_before(node):
            permuted = gm.graph.call_method("permute", (src, 0, 2, 3, 1))
        node.replace_input_with(src, permuted)
        if node.op == "call_method" and node.target == "view":
            node.target = "reshape"  # view cannot flatten the permuted (strided) tensor
        changed = True
    if not changed:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm


def _flattened_map(node: fx.Node) -> fx.Node | None:
    """The 4-D input of ``node`` if ``node`` flattens (N, C, H, W) with H*W > 1 to (N, C*H*W)."""
    is_flatten = (
        (node.op == "call_function" and node.target in _FLATTEN_FUNCS)
        or (node.op == "call_method" and node.target in _FLATTEN_METHODS)
        or (node.op == "call_module" and isinstance(
            node.graph.owning_module.get_submodule(str(node.target)), nn.Flatten))
    )
    if not is_flatten or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    src_meta, out_meta = src.meta.get("tensor_meta"), node.meta.get("tensor_meta")
    if src_meta is None or out_meta is None or not hasattr(out_meta, "shape"):
        return None
    s, o = tuple(src_meta.shape), tuple(out_meta.shape)
    if len(s) != 4 or s[2] * s[3] == 1 or o != (s[0], s[1] * s[2] * s[3]):
        return None
    return src
