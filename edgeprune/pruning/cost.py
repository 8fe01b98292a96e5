"""What the pruner minimises: predicted latency from a :class:`LatencyProfile` (milliseconds
on the profile's target) or, for the analytical ``macs`` target, multiply-accumulates
(millions). Both price a model at hypothetical layer widths without touching a runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import nn

from edgeprune.graph.layers import LayerUnit, layer_units, model_macs

if TYPE_CHECKING:
    from edgeprune.profiling.latency import LatencyProfile


class Cost:
    """``cost(widths)``: predicted cost of the model at layer widths {path: (c_in, c_out)}
    (layers not named keep their widths). ``unit`` is "ms" or "MMACs"."""

    unit: str  # of the cost: "ms" or "MMACs"
    source: str  # "measured", "estimate" (a latency profile's provenance) or "analytical"
    layers: list[LayerUnit]  # the layers it prices

    def __call__(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        raise NotImplementedError

    def of_model(self, model: nn.Module) -> float:
        """Cost of ``model`` itself (widths read from its layers)."""
        raise NotImplementedError


class LatencyCost(Cost):
    unit = "ms"

    def __init__(self, profile: LatencyProfile, model: nn.Module) -> None:
        self.profile = profile
        self.layers = profile.units(model)  # refuses a model of another architecture
        self.source = profile.source

    def __call__(self, widths=None) -> float:
        return self.profile.predict_units(self.layers, dict(widths or {}))

    def of_model(self, model: nn.Module) -> float:
        return self.profile.predict_ms(model)


class MacsCost(Cost):
    unit = "MMACs"
    source = "analytical"

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int]) -> None:
        self.input_shape = tuple(input_shape)
        self.layers = layer_units(model, self.input_shape)

    def __call__(self, widths=None) -> float:
        widths = widths or {}
        return sum(u.macs(*widths.get(u.path, (u.c_in, u.c_out))) for u in self.layers) / 1e6

    def of_model(self, model: nn.Module) -> float:
        return model_macs(model, self.input_shape) / 1e6
