"""The public verbs on a model the user brings: a plain nn.Module, no zoo name, no spec."""

import inspect

import torch
from torch import nn

import edgeprune
from edgeprune.bundle import FORMATS
from tests.nets import randomize_bn


class Plain(nn.Module):
    """A user's own network (module level, so its bundle's checkpoint can rebuild it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


def test_verbs_are_plain_functions_with_keyword_options():
    for verb in ("profile", "measure", "prune", "export", "validate", "budget_range"):
        fn = getattr(edgeprune, verb)
        assert inspect.isfunction(fn), verb
        params = list(inspect.signature(fn).parameters.values())
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert len(positional) <= 2, (verb, positional)  # the thing acted on (and its data)
        assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        names = {p.name for p in params}
        assert "on_progress" in names or verb in ("measure", "budget_range"), verb


def test_a_plain_module_prunes_on_host_litert_and_exports_to_every_format(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(Plain()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(16, 3, 16, 16, generator=g) for _ in range(10)]  # the input shape's only source

    prof = edgeprune.profile(model, target="host-litert", input_shape=(3, 16, 16))
    reach = edgeprune.budget_range(model, target="host-litert", profile=prof)  # its floor is this CPU's
    budget = max(0.8 * reach.baseline, 1.05 * reach.floor)
    assert budget < reach.baseline, reach
    res = edgeprune.prune(model, data, target="host-litert", budget_ms=budget, profile=prof,
                          config=edgeprune.PruneConfig(steps=12, update_interval=2))
    assert res.cost_unit == "ms" and res.predicted_cost <= res.budget < res.baseline_cost
    assert res.removal_max_abs_diff <= 1e-4

    bundle = edgeprune.export(res.model, tmp_path / "bundle", data=data)
    assert [a.format for a in bundle.artifacts] == list(FORMATS)
    assert bundle.model_json["architecture"] == "tests.test_api:Plain"
    assert bundle.model_json["input"]["shape_nchw"] == [1, 3, 16, 16]
    report = edgeprune.validate(bundle, data)
    rows = {c.format: c for c in report.checks}
    for fmt in ("tflite", "onnx"):  # fp32: the converted network is the pruned one
        assert rows[fmt].status == "pass", rows[fmt]
    assert rows["tflite-int8"].images == 160 and rows["tflite-int8"].max_abs is not None
    # the caller's model: not modified, still in training mode
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "edgeprune_spec")
