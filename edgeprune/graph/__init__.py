"""The model's structure, read once: channel groups (one walk of Torch-Pruning's dependency
graph), the layers a latency table prices, what a group's width does to each layer, and
physical channel removal. Pure torch; no runtime, no file."""

from edgeprune.graph.groups import GroupStructure, group_structure, output_layers
from edgeprune.graph.layers import LayerUnit, layer_units
from edgeprune.graph.surgery import PruningStructureError, remove_channels, shrink_to_widths
from edgeprune.graph.widths import WidthMap, layer_widths

__all__ = ["GroupStructure", "LayerUnit", "PruningStructureError", "WidthMap", "group_structure",
           "layer_units", "layer_widths", "output_layers", "remove_channels", "shrink_to_widths"]
