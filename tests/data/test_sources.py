import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune import data
from edgeprune.data import shapes
from edgeprune.errors import DataError
from tests.nets import write_cifar10

# ---- shapes ------------------------------------------------------------------------------

def test_shapes_is_deterministic_and_balanced():
    a, ya = shapes.generate(200, seed=5)
    b, yb = shapes.generate(200, seed=5)
    c, _ = shapes.generate(200, seed=6)
    assert a.shape == (200, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert np.bincount(ya, minlength=10).tolist() == [20] * 10


def test_shapes_images_carry_the_shape():
    a, y = shapes.generate(400, seed=0)
    assert a.std() > 20  # not blank: noise, textures and shapes are present
    # a nearest-class-mean classifier on raw pixels is near chance: colour, texture and
    # position are nuisances, the outline is the class
    x = a.reshape(len(a), -1).astype(np.float32)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    pred = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() < 0.35


def test_shapes_train_val_and_test_share_no_image():
    """The val split (every choice a benchmark makes) is drawn apart from train and test."""
    seen = {}
    for split in ("train", "val", "test"):
        src = data.open(f"shapes:{split}", labels=True)
        assert len(src) == data.sources.SHAPES_SIZES[split]
        x, _ = src.get_batch(np.arange(len(src)))
        seen[split] = {bytes(img.numpy().tobytes()) for img in x}
    assert not seen["val"] & seen["train"] and not seen["val"] & seen["test"]
    assert not seen["train"] & seen["test"]
    for spec in ("digits:val",):
        with pytest.raises(DataError, match="no val split"):
            data.open(spec)


def test_shapes_unlabeled_by_default_and_labels_on_request():
    src = data.open("shapes", limit=10)
    assert isinstance(src[0], torch.Tensor) and src[0].shape == (3, 32, 32)
    lab = data.open("shapes", labels=True, limit=10)
    x, y = lab[0]
    assert 0 <= y < 10 and lab.class_names[0] == "circle"
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# ---- digits --------------------------------------------------------------------------------

def test_digits_split_and_upsampling():
    tr = data.open("digits", labels=True)
    te = data.open("digits:test", labels=True)
    assert len(tr) + len(te) == 1797 and len(te) == 359
    x, y = tr.get_batch(np.arange(4))
    assert x.shape == (4, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1])  # grey replicated into RGB
    assert not tr.flip_ok


# ---- image folders ---------------------------------------------------------------------------

def _write_images(folder, n, size=(40, 30), seed=0, suffix=".png"):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}{suffix}")


def test_labelled_image_folder(tmp_path):
    _write_images(tmp_path / "cat", 3)
    _write_images(tmp_path / "dog" / "nested", 2, suffix=".jpg")
    src = data.open(str(tmp_path), labels=True, size=24)
    assert len(src) == 5 and src.class_names == ("cat", "dog")
    x, y = src.get_batch(np.arange(5))
    assert x.shape == (5, 3, 24, 24)
    assert y.tolist() == [0, 0, 0, 1, 1]


def test_unlabeled_flat_folder(tmp_path):
    _write_images(tmp_path, 3)
    src = data.open(str(tmp_path))
    assert len(src) == 3 and not src.has_labels
    with pytest.raises(DataError, match="has no labels"):
        data.open(str(tmp_path), labels=True)


def test_folder_split_subdirectory(tmp_path):
    _write_images(tmp_path / "train" / "a", 2)
    _write_images(tmp_path / "test" / "a", 1)
    assert len(data.open(f"{tmp_path}:test")) == 1
    assert len(data.open(str(tmp_path), split="train")) == 2
    # no split named: the whole tree would mix test images into the data, so it is refused
    with pytest.raises(DataError, match=r"split sub-folders train/, test/; name the one to read, e\.g\. .*:train"):
        data.open(str(tmp_path))
    # a default split applies only when the spec names none
    assert len(data.open(str(tmp_path), default_split="train")) == 2
    assert len(data.open(f"{tmp_path}:test", default_split="train")) == 1
    assert data.open("shapes", default_split="test", limit=4).split == "test"


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no .png/.jpg files"):
        data.open(str(tmp_path))


def test_unreadable_image(tmp_path):
    _write_images(tmp_path, 1)
    (tmp_path / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    src = data.open(str(tmp_path))
    with pytest.raises(DataError, match="zz_broken.png"):
        src.get_batch(np.arange(2))


# ---- arrays -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npy_uint8_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    arr = nhwc if layout == "NHWC" else nhwc.transpose(0, 3, 1, 2)
    np.save(tmp_path / "x.npy", arr)
    src = data.open(str(tmp_path / "x.npy"))
    x, _ = src.get_batch(np.arange(6))
    assert torch.allclose(x, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255)


def test_npz_float_with_labels_and_resize(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (5, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 1, 2, 1, 0]))
    src = data.open(str(tmp_path / "d.npz"), labels=True)
    xb, yb = src.get_batch(np.arange(5))
    assert xb.shape == (5, 3, 32, 32) and yb.tolist() == [0, 1, 2, 1, 0]
    assert src.num_classes == 3


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 32, 32, 5), np.uint8), "no axis of 1 or 3 channels"),
    (np.zeros((4, 32), np.uint8), "expected \\(N, H, W, C\\)"),
    (np.zeros((4, 8, 8, 3), np.int32), "dtype int32"),
    (np.full((4, 8, 8, 3), 3.0, np.float32), "must lie in \\[0, 1\\]"),
])
def test_bad_arrays(tmp_path, bad, message):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match=message):
        data.open(str(tmp_path / "bad.npy"))


def test_npz_bad_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8, 3), np.uint8), y=np.array([0.5, 1, 2]))
    with pytest.raises(DataError, match="expected integers"):
        data.open(str(tmp_path / "d.npz"))


def test_npz_without_images(tmp_path):
    np.savez(tmp_path / "d.npz", foo=np.zeros(3))
    with pytest.raises(DataError, match="no images array"):
        data.open(str(tmp_path / "d.npz"))


def test_pickled_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot be read"):
        data.open(str(tmp_path / "o.npy"))


# ---- CIFAR-10 python format -------------------------------------------------------------------

def test_cifar10_directory(tmp_path):
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    tr = data.open(str(root), labels=True)
    te = data.open(f"{root}:test", labels=True)
    assert len(tr) == 20 and len(te) == 4
    assert tr.class_names[3] == "c3"
    with open(root / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x, y = te.get_batch(np.arange(4))
    want = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(x, want) and y.tolist() == raw[b"labels"]


def test_cifar10_refuses_code_in_pickle(tmp_path):
    root = tmp_path / "c"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DataError, match="not allowed"):
        data.open(f"{root}:test")


# ---- specs and iteration --------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("/no/such/place", "does not exist"),
    ("shapes:valid", "does not exist"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        data.open(spec)


def test_bad_split_and_limit():
    with pytest.raises(DataError, match="split 'dev'"):
        data.open("shapes", split="dev")
    with pytest.raises(DataError, match="limit=0"):
        data.open("shapes", limit=0)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported type '.csv'"):
        data.open(str(tmp_path / "x.csv"))


def test_batches_normalise_and_cover_everything():
    src = data.open("shapes", labels=True, limit=50)
    mean, std = data.channel_stats(src)
    got = list(data.batches(src, 16, mean=mean, std=std, shuffle=True, seed=1))
    assert [len(y) for _, y in got] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in got])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert sorted(torch.cat([b[1] for b in got]).tolist()) == sorted(src.labels_array().tolist())


def test_augmentation_is_seeded_and_changes_images():
    src = data.open("shapes", limit=8)
    a = next(data.batches(src, 8, augment=True, seed=3))
    b = next(data.batches(src, 8, augment=True, seed=3))
    plain = next(data.batches(src, 8))
    assert torch.equal(a, b) and not torch.equal(a, plain)
    assert a.shape == plain.shape
