"""Concrete data sources behind :func:`edgeprune.data.open`."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SHAPES_SIZES = {"train": 10000, "val": 10000, "test": 2000}
# disjoint streams: test images are never train images; val (for every choice a method or a
# benchmark makes) is drawn apart from both, so the test split is read for final tables only.
# val is large: on 2,000 images one model's top-1 has a standard error near 0.5 points, and
# choices between configurations 0.5 points apart were made on noise (docs/benchmarks.md)
SHAPES_SEEDS = {"train": 0, "test": 1, "val": 2}
_DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageSource:
    """An indexable set of images; ``source[i]`` is a float32 (C, H, W) tensor in [0, 1],
    or ``(image, label)`` when opened with ``labels=True``."""

    name: str
    split: str | None
    size: tuple[int, int]
    labels_requested: bool
    class_names: tuple[str, ...]
    _images: np.ndarray | None  # uint8 or float32 NHWC, in memory
    _files: tuple[Path, ...] | None  # or image files read lazily
    _labels: np.ndarray | None
    flip_ok: bool = True  # horizontal flip keeps the class (False for digits)

    def __len__(self) -> int:
        return len(self._images) if self._images is not None else len(self._files or ())

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, i: int):
        x, y = self.get_batch(np.asarray([i]))
        return (x[0], int(y[0])) if y is not None else x[0]

    def get_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``idx`` as a float32 (N, C, H, W) tensor in [0, 1], and labels when asked."""
        if self._images is not None:
            arr = self._images[idx]
        else:
            files = self._files or ()
            arr = np.stack([_read_image(files[int(i)], self.size) for i in idx])
        x = _to_unit_nchw(arr, self.size)
        y = None
        if self.labels_requested and self._labels is not None:
            y = torch.from_numpy(self._labels[idx].astype(np.int64))
        return x, y

    def labels_array(self) -> np.ndarray:
        if self._labels is None:
            raise DataError(f"data source {self.name!r} has no labels")
        return self._labels


def open(spec: str, *, split: str | None = None, labels: bool = False,  # noqa: A001
         size: int | tuple[int, int] = 32, limit: int | None = None,
         default_split: str | None = None) -> ImageSource:
    """Open a data source by spec (see the package docstring). ``split`` may also be given as a
    ``:train``/``:test`` suffix of the spec; ``default_split`` is used when neither names one
    (the CLI's train and prune read ``train`` unless told otherwise); ``limit`` keeps the first
    N images."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec {spec!r} is empty; give shapes, digits, or a path")
    name, split = _split_spec(spec.strip(), split)
    if split is None and default_split is not None:
        name, split = _split_spec(name, default_split)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise DataError(f"image size {size!r} is invalid; need positive height and width")
    if limit is not None and limit < 1:
        raise DataError(f"limit={limit} is invalid; need at least 1 image (or no limit)")
    if name == "shapes":
        src = _open_shapes(split or "train", hw, limit)
    elif name == "digits":
        src = _open_digits(split or "train", hw)
    else:
        src = _open_path(Path(name), split, hw)
    if labels and not src.has_labels:
        raise DataError(
            f"data source {spec!r} has no labels; label an image folder by class sub-folders, "
            "give an .npz with a 'labels' (or 'y') array, or open it without labels"
        )
    src = _replace(src, labels_requested=labels)
    if limit is not None and limit < len(src):
        src = _take(src, limit)
    if len(src) == 0:
        raise DataError(f"data source {spec!r} is empty")
    return src


def _split_spec(spec: str, split: str | None) -> tuple[str, str | None]:
    name = spec
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS and head and not Path(spec).exists():
        name = head
        if split is not None and split != tail:
            raise DataError(f"data spec {spec!r} names split {tail!r} but split={split!r} was given")
        split = tail
    if split is not None and split not in SPLITS:
        raise DataError(f"split {split!r} is invalid; use one of {SPLITS}")
    return name, split


def _replace(src: ImageSource, **changes) -> ImageSource:
    fields = {f: getattr(src, f) for f in src.__dataclass_fields__}
    fields.update(changes)
    return ImageSource(**fields)


def _take(src: ImageSource, n: int) -> ImageSource:
    return _replace(
        src,
        _images=src._images[:n] if src._images is not None else None,
        _files=src._files[:n] if src._files is not None else None,
        _labels=src._labels[:n] if src._labels is not None else None,
    )


# ---- built-in sources -------------------------------------------------------------------

def _open_shapes(split: str, hw: tuple[int, int], limit: int | None) -> ImageSource:
    from edgeprune.data import shapes

    n = SHAPES_SIZES[split] if limit is None else min(limit, SHAPES_SIZES[split])
    images, labels = shapes.generate(n, seed=SHAPES_SEEDS[split])
    return ImageSource("shapes", split, hw, False, shapes.CLASS_NAMES, images, None, labels)


def _open_digits(split: str, hw: tuple[int, int]) -> ImageSource:
    from sklearn.datasets import load_digits

    if split == "val":
        raise DataError("digits has no val split (1,797 images: train and test only); use shapes, "
                        "or data of your own with a val folder or x_val/y_val arrays")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(x))
    cut = int(round(0.8 * len(x)))
    idx = order[:cut] if split == "train" else order[cut:]
    rgb = np.repeat(x[idx][..., None], 3, axis=-1)  # NHWC, 3 channels
    names = tuple(str(i) for i in range(10))
    return ImageSource("digits", split, hw, False, names, rgb, None, d.target[idx].astype(np.int64),
                       flip_ok=False)


# ---- sources on disk --------------------------------------------------------------------

def _open_path(path: Path, split: str | None, hw: tuple[int, int]) -> ImageSource:
    if not path.exists():
        raise DataError(
            f"data source {str(path)!r} does not exist; give shapes, digits, a CIFAR-10 "
            "directory, an image folder, or an .npy/.npz file"
        )
    if path.is_dir():
        if (path / "test_batch").exists() or (path / "data_batch_1").exists():
            return _open_cifar10(path, split or "train", hw)
        if split is not None and (path / split).is_dir():
            path = path / split
        elif split is None and (parts := [s for s in SPLITS if (path / s).is_dir()]):
            # reading the whole tree would mix the splits (test images in the training data)
            raise DataError(
                f"image folder {str(path)!r} has split sub-folders {', '.join(p + '/' for p in parts)}; "
                f"name the one to read, e.g. {str(path)}:{parts[0]}"
            )
        return _open_folder(path, split, hw)
    if path.suffix == ".npy":
        return _open_npy(path, split, hw)
    if path.suffix == ".npz":
        return _open_npz(path, split, hw)
    raise DataError(
        f"data file {str(path)!r} has an unsupported type {path.suffix!r}; use .npy, .npz, "
        "an image folder or a CIFAR-10 directory"
    )


def _open_cifar10(path: Path, split: str, hw: tuple[int, int]) -> ImageSource:
    if split == "val":
        raise DataError(f"CIFAR-10 directory {str(path)!r} has train and test batches only, no val "
                        "split; hold images out into an .npz with x_val/y_val arrays")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [path / n for n in names if (path / n).exists()]
    if not files:
        raise DataError(f"CIFAR-10 directory {str(path)!r} has none of {names} for split {split!r}")
    xs, ys = [], []
    for f in files:
        d = _read_cifar_pickle(f)
        data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
        if data is None or labels is None:
            raise DataError(f"CIFAR-10 file {str(f)!r} has no 'data'/'labels' entries")
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise DataError(
                f"CIFAR-10 file {str(f)!r} has data {data.dtype}{tuple(data.shape)}; "
                "expected uint8 (N, 3072)"
            )
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(labels, dtype=np.int64))
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
    meta = path / "batches.meta"
    if meta.exists():
        m = _read_cifar_pickle(meta)
        raw = m.get(b"label_names", m.get("label_names"))
        if raw:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
    return ImageSource("cifar10", split, hw, False, classes, np.concatenate(xs), None,
                       np.concatenate(ys))


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickled dicts of bytes, lists, ints and numpy arrays; refuse any
    other global so a malicious file cannot execute code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_pickle(f: Path) -> dict:
    try:
        with f.open("rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"CIFAR-10 file {str(f)!r} is not a readable python-format batch: {e}") from e
    if not isinstance(d, dict):
        raise DataError(f"CIFAR-10 file {str(f)!r} holds {type(d).__name__}, expected a dict")
    return d


def _open_folder(path: Path, split: str | None, hw: tuple[int, int]) -> ImageSource:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"image folder {str(path)!r} has no .png/.jpg files; point at a folder of images"
        )
    rel = [f.relative_to(path).parts for f in files]
    labelled = all(len(r) >= 2 for r in rel)
    labels, classes = None, ()
    if labelled:
        classes = tuple(sorted({r[0] for r in rel}))
        labels = np.asarray([classes.index(r[0]) for r in rel], dtype=np.int64)
    _read_image(files[0], hw)  # fail early on an unreadable first file
    return ImageSource(f"folder:{path}", split, hw, False, classes, None, tuple(files), labels)


def _read_image(f: Path, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)  # centre crop to a square, then resize
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"image file {str(f)!r} cannot be read: {e}") from e


def _open_npy(path: Path, split: str | None, hw: tuple[int, int]) -> ImageSource:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"array file {str(path)!r} cannot be read: {e}") from e
    return ImageSource(f"npy:{path}", split, hw, False, (), _check_images(arr, path), None, None)


def _open_npz(path: Path, split: str | None, hw: tuple[int, int]) -> ImageSource:
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"array file {str(path)!r} cannot be read: {e}") from e
    xkey = _pick_key(keys, ("x", "images", "data", f"x_{split}", f"images_{split}"), path, "images")
    images = _check_images(z[xkey], path)
    ykey = next((k for k in ("y", "labels", f"y_{split}", f"labels_{split}") if k in keys), None)
    labels, classes = None, ()
    if ykey is not None:
        labels = np.asarray(z[ykey])
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels {ykey!r} in {str(path)!r} have {labels.dtype}{tuple(labels.shape)}; "
                f"expected integers of shape ({len(images)},)"
            )
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise DataError(f"labels {ykey!r} in {str(path)!r} contain a negative class {labels.min()}")
        classes = tuple(str(i) for i in range(int(labels.max()) + 1))
        if "class_names" in keys:
            classes = tuple(str(c) for c in z["class_names"])
    return ImageSource(f"npz:{path}", split, hw, False, classes, images, None, labels)


def _pick_key(keys: set[str], options: Sequence[str], path: Path, what: str) -> str:
    for k in options:
        if k in keys:
            return k
    raise DataError(f"array file {str(path)!r} has no {what} array; found keys {sorted(keys)}, "
                    f"expected one of {list(options)[:3]}")


def _check_images(arr: np.ndarray, path: Path) -> np.ndarray:
    """Accept (N, H, W, C) or (N, C, H, W) with C in {1, 3}, uint8 or float in [0, 1];
    return NHWC with 3 channels."""
    if arr.ndim == 3:  # (N, H, W) grey
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"array in {str(path)!r} has shape {tuple(arr.shape)}; expected (N, H, W, C) "
                        "or (N, C, H, W) images")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] not in (1, 3):
        raise DataError(f"array in {str(path)!r} has shape {tuple(arr.shape)}; no axis of 1 or 3 "
                        "channels at position 1 (NCHW) or 3 (NHWC)")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan = int(np.isnan(arr).sum())
            raise DataError(f"float images in {str(path)!r} contain {n_nan} NaN and "
                            f"{int(bad.sum()) - n_nan} infinite value(s); clean them (e.g. "
                            "np.nan_to_num) or save uint8 images")
        if arr.min() < 0 or arr.max() > 1:
            raise DataError(f"float images in {str(path)!r} must lie in [0, 1] "
                            f"(saw [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]); scale them or save uint8")
    else:
        raise DataError(f"images in {str(path)!r} have dtype {arr.dtype}; use uint8 or float32")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _to_unit_nchw(arr: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    x = x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x.contiguous()


# ---- iteration --------------------------------------------------------------------------

def batches(source: ImageSource, batch_size: int, *, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, shuffle: bool = False, seed: int = 0,
            augment: bool = False, drop_last: bool = False
            ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised batches: tensors, or ``(x, y)`` when the source was opened with labels.

    ``augment`` applies the usual CIFAR augmentation (4-pixel pad + random crop, and a
    horizontal flip where the source allows it), seeded by ``seed``.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} is invalid; need at least 1")
    n = len(source)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).numpy() if shuffle else np.arange(n)
    m = torch.tensor(mean).view(1, -1, 1, 1) if mean is not None else None
    s = torch.tensor(std).view(1, -1, 1, 1) if std is not None else None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        x, y = source.get_batch(idx)
        if augment:
            x = _augment(x, g, flip=source.flip_ok)
        if m is not None:
            x = (x - m) / s
        yield (x, y) if y is not None else x


def input_of(batch: object) -> torch.Tensor:
    """The input tensor of a batch: the batch itself, or the first element of a tuple/list
    (labels, if any, are not read). Refuses anything but float NCHW."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        what = (f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, torch.Tensor)
                else type(x).__name__)
        raise DataError(f"data yielded a {what}; need float NCHW input batches "
                        "(tensors, or tuples whose first element is the input)")
    return x


class Batches:
    """A re-iterable of normalised batches (what :func:`edgeprune.prune` and training loops
    want): every pass reshuffles (seed + pass number) and augments, except the first
    ``fixed_batches`` batches, which are the same un-augmented images in the same order on
    every pass (the pruner holds them out to pick its best student)."""

    def __init__(self, source: ImageSource, batch_size: int, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, shuffle: bool = True, augment: bool = False,
                 fixed_batches: int = 0, seed: int = 0) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} is invalid; need at least 1")
        if fixed_batches < 0 or fixed_batches * batch_size >= len(source):
            raise DataError(f"fixed_batches={fixed_batches} (batches of {batch_size} images) is invalid "
                            f"for {len(source)} images: it must leave some to train on; use more "
                            "images, a smaller batch size or fewer fixed batches")
        self.source, self.batch_size = source, batch_size
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std).view(1, -1, 1, 1) if std is not None else None
        self.shuffle, self.augment, self.fixed, self.seed = shuffle, augment, fixed_batches, seed
        self.passes = 0

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        n, head = len(self.source), self.fixed * self.batch_size
        rest = torch.randperm(n - head, generator=g).numpy() if self.shuffle else np.arange(n - head)
        order = np.concatenate([np.arange(head), head + rest])
        for i, start in enumerate(range(0, n, self.batch_size)):
            x, y = self.source.get_batch(order[start:start + self.batch_size])
            if self.augment and i >= self.fixed:
                x = _augment(x, g, flip=self.source.flip_ok)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            yield (x, y) if y is not None else x


def _augment(x: torch.Tensor, g: torch.Generator, *, flip: bool, pad: int = 4) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None])  # (n, w)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def channel_stats(source: ImageSource, *, max_images: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the source's [0, 1] pixels (first ``max_images``)."""
    x, _ = source.get_batch(np.arange(min(len(source), max_images)))
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
