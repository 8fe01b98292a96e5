"""Data sources: ``edgeprune.data.open(spec, split=..., labels=...)``.

Specs:
  ``shapes[:train|test]``     edgeprune's procedural 10-class set (``edgeprune.data.shapes``)
  ``digits[:train|test]``     scikit-learn's bundled 8x8 digits, upsampled to 32x32 RGB
  ``PATH[:train|test]``       a CIFAR-10 python-format directory (data_batch_1..5, test_batch),
                              an image folder (recursive jpg/png; class = first sub-folder), or a
                              ``.npy`` / ``.npz`` array file (NCHW or NHWC, uint8 or float)

Every source yields float32 NCHW tensors with pixel values in [0, 1], resized to the
requested size. Normalisation belongs to the model (its ``InputSpec``) and is applied by
:func:`batches`. Sources are unlabeled unless ``labels=True``; pruning never asks for labels.
"""

from edgeprune.data.sources import (
    Batches,
    ImageSource,
    batches,
    channel_stats,
    input_of,
    open,  # noqa: A004 - the public verb is edgeprune.data.open
)

__all__ = ["Batches", "ImageSource", "batches", "channel_stats", "input_of", "open"]
