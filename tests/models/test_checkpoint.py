import json
import struct

import pytest
import torch
import torch_pruning as tp

import edgeprune
from edgeprune import models
from edgeprune.errors import CheckpointError, ConfigError
from edgeprune.models.checkpoint import ModelSpec, layer_shapes, read_header
from edgeprune.types import InputSpec
from tests.nets import randomize_bn


def prune_some_channels(model, example, seed=0):
    """Physically remove random output channels from every conv group Torch-Pruning allows."""
    g = torch.Generator().manual_seed(seed)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs[:-1] if len(convs) > 1 else convs:
        n = conv.out_channels
        if n < 4:
            continue
        k = int(torch.randint(1, n // 2, (1,), generator=g))
        idxs = torch.randperm(n, generator=g)[:k].tolist()
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
        if dg.check_pruning_group(group):
            group.prune()
    return model


def test_round_trip_is_bit_exact(tmp_path):
    m = randomize_bn(models.create("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    path = edgeprune.save(m, tmp_path / "r20.safetensors")
    back = edgeprune.load(path)
    with torch.no_grad():
        assert torch.equal(m(x), back(x))
    assert back.edgeprune_spec.architecture == "resnet20"
    assert not back.training


def test_pruned_model_round_trip_is_bit_exact(tmp_path):
    m = randomize_bn(models.create("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    prune_some_channels(m, x)
    widths = layer_shapes(m)
    assert widths["conv1"]["out_channels"] < 16  # the pruning really changed widths
    path = edgeprune.save(m, tmp_path / "pruned.safetensors")
    back = edgeprune.load(path)
    assert layer_shapes(back) == widths
    with torch.no_grad():
        assert torch.equal(m.eval()(x), back(x))


def test_depthwise_factory_model_round_trip(tmp_path):
    from tests.nets import TinyNet

    m = randomize_bn(TinyNet(width=12))
    x = torch.randn(2, 3, 32, 32)
    prune_some_channels(m, x, seed=3)
    assert m.dw[0].groups == m.dw[0].out_channels < 12
    spec = ModelSpec("tests.nets:tiny_net", {"width": 12},
                     InputSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=tuple("abcdefghij")))
    path = edgeprune.save(m, tmp_path / "tiny.safetensors", spec=spec)
    back = edgeprune.load(path)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), back(x))
    assert back.edgeprune_spec.input.class_names[0] == "a"
    assert back.edgeprune_spec.input.mean == (0.5, 0.5, 0.5)


def test_header_is_plain_json_with_layers(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    h = read_header(path)
    assert h["layers"]["layer3.2.conv2"] == {"kind": "conv2d", "in_channels": 64,
                                             "out_channels": 64, "groups": 1}
    assert h["layers"]["fc"] == {"kind": "linear", "in_features": 64, "out_features": 10}
    # the file starts with an 8-byte header length and a JSON header, no pickle opcode
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8:8 + n])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        edgeprune.load(tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="m.safetensors"):
        edgeprune.load(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        edgeprune.load(path)


def test_plain_safetensors_without_spec(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no edgeprune spec"):
        edgeprune.load(path)


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    spec = json.loads(header["__metadata__"]["edgeprune"])
    edit(spec)
    header["__metadata__"]["edgeprune"] = json.dumps(spec)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_mismatched_widths_name_the_tensor(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    _rewrite_header(path, lambda s: s["layers"]["layer1.0.conv1"].update(out_channels=8))
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight"):
        edgeprune.load(path)


def test_mismatched_architecture(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    _rewrite_header(path, lambda s: s.update(architecture="vgg_small", layers={}))
    with pytest.raises(CheckpointError, match="does not match architecture 'vgg_small'"):
        edgeprune.load(path)


def test_unknown_layer_in_header(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    _rewrite_header(path, lambda s: s["layers"].update({"nowhere": {"kind": "linear"}}))
    with pytest.raises(CheckpointError, match="'nowhere'"):
        edgeprune.load(path)


def test_future_schema_version(tmp_path):
    path = edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors")
    _rewrite_header(path, lambda s: s.update(schema_version=99))
    with pytest.raises(CheckpointError, match="schema_version 99"):
        edgeprune.load(path)


def test_save_needs_architecture_and_suffix(tmp_path):
    from tests.nets import TinyNet

    with pytest.raises(ConfigError, match="no architecture record"):
        edgeprune.save(TinyNet(), tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match=r"\.safetensors"):
        edgeprune.save(models.create("resnet20"), tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="neither a zoo model"):
        ModelSpec("resnet21")


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "m.safetensors"
    edgeprune.save(models.create("resnet20"), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        edgeprune.save(models.create("resnet56"), path)
    assert path.read_bytes() == before  # the old file survives a failed save
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp left behind
