"""Every conv/linear's (c_in, c_out) as a function of channel-group widths: what a latency
profile prices (a layer holding a share of a group, such as one branch of a concatenation, is
priced at that share of the group's width). A removed residual block's layers are (0, 0): a
layer with no channels does not exist and costs nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from edgeprune.graph.blocks import BlockStructure
from edgeprune.graph.groups import GroupStructure


class WidthMap:
    """Every conv/linear's (c_in, c_out) as a function of group widths: ``wm({g: width})``
    (groups not named keep their width; layers in no group keep theirs; a block of
    ``blocks`` given width 0 is removed: its layers become (0, 0)). Built once per model, so
    a selection loop can price thousands of candidate widths cheaply."""

    def __init__(self, model: nn.Module, groups: list[GroupStructure],
                 blocks: Sequence[BlockStructure] = ()) -> None:
        self.blocks = {b.name: b.layers for b in blocks}
        self.base: dict[str, tuple[int, int]] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.base[name] = (m.in_channels, m.out_channels)
            elif isinstance(m, nn.Linear):
                self.base[name] = (m.in_features, m.out_features)
        modules = dict(model.named_modules())
        # per group: (layer path, side 0=in 1=out, share, depthwise)
        self.effects: dict[str, list[tuple[str, int, float, bool]]] = {}
        for g in groups:
            eff = []
            for path, share in g.outs:
                m = modules[path]
                dw = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                eff.append((path, 1, share, dw))
            eff += [(path, 0, share, False) for path, share in g.ins]
            self.effects[g.name] = eff

    def __call__(self, group_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        widths = dict(self.base)
        for gname, w in group_widths.items():
            if gname in self.blocks:
                continue
            for path, side, share, dw in self.effects[gname]:
                n = max(1, round(int(w) * share))
                ci, co = widths[path]
                if side == 1:
                    widths[path] = (n, n) if dw else (ci, n)  # depthwise: in and out move together
                else:
                    widths[path] = (n, co)
        for bname, layers in self.blocks.items():
            if group_widths.get(bname, 1) == 0:
                widths.update({path: (0, 0) for path in layers})
        return widths


def layer_widths(model: nn.Module, groups: list[GroupStructure],
                 group_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(c_in, c_out) of every conv/linear when each group ``g`` has ``group_widths[g]``
    channels (groups not named keep their width; layers in no group keep theirs)."""
    return WidthMap(model, groups)(group_widths)
