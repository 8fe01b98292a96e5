import pytest
import torch

from edgeprune import models
from edgeprune.errors import EdgepruneError, ModelNotFoundError

EXPECTED_PARAMS = {  # exact counts of this zoo's definitions
    "resnet20": 272_474,
    "resnet56": 855_770,
    "vgg_small": 4_660_106,
    "mobilenetv2": 2_236_682,
}


def test_names_lists_every_model():
    assert models.names() == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_shapes_and_parameter_counts(name):
    m = models.create(name, num_classes=7).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    n = sum(p.numel() for p in m.parameters())
    # the counts above are for 10 classes; 7 classes drop 3 rows of the head (weights + bias)
    assert n == EXPECTED_PARAMS[name] - 3 * (_head_in(name) + 1)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def _head_in(name):
    return {"resnet20": 64, "resnet56": 64, "vgg_small": 8192, "mobilenetv2": 1280}[name]


def test_paper_sizes():
    # the reference sizes: resnet20 ~0.27M, resnet56 ~0.86M parameters
    count = {n: sum(p.numel() for p in models.create(n).parameters()) for n in ("resnet20", "resnet56")}
    assert abs(count["resnet20"] - 0.27e6) < 0.01e6
    assert abs(count["resnet56"] - 0.86e6) < 0.01e6


def test_in_channels():
    m = models.create("resnet20", in_channels=1).eval()
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelNotFoundError) as e:
        models.create("resnet21")
    msg = str(e.value)
    assert "resnet21" in msg and "resnet20" in msg and "vgg_small" in msg
    assert isinstance(e.value, EdgepruneError)


def test_bad_num_classes():
    with pytest.raises(EdgepruneError, match="num_classes=1"):
        models.create("resnet20", num_classes=1)


def test_create_records_architecture():
    m = models.create("resnet56", num_classes=4)
    assert m.edgeprune_arch == {"name": "resnet56", "kwargs": {"num_classes": 4, "in_channels": 3}}


def test_register_refuses_duplicates():
    with pytest.raises(EdgepruneError, match="already registered"):
        models.register("resnet20")(lambda **kw: None)
