"""The `data` config: defaults and early validation.

Fields (see `get_config_defaults`):
  source          "fashion_mnist" | "digits" | "tfds"
  name            TFDS dataset name when source == "tfds" (e.g. "cifar10")
  data_dir        raw local source directory (Fashion-MNIST IDX files) or None
  tfds_data_dir   where prepared TFDS datasets live; None -> $EVONAS_TFDS_DIR,
                  else ~/tensorflow_datasets
  val_size        validation examples carved from train for local sources
                  (int; a float in (0, 1) is a fraction); ignored for "tfds"
  allow_fallback  use digits (loudly) when Fashion-MNIST files are missing
  image_size      output height = width in pixels
  channels        output channels, 1 or 3 (gray <-> RGB converted)
  crop_padding    pad-then-random-crop padding in output pixels (0 = off)
  random_flip     random horizontal flips in training
  mean, std       normalisation in [0, 1] pixel units; float or per-channel tuple
  image_key, label_key                 record keys in the TFDS dataset
  train_split, val_split, test_split   TFDS split names or expressions
  num_threads, prefetch                grain reader threads / prefetched batches
  cache_max_mb    keep decoded fixed-shape splits up to this size in RAM
                  (filled lazily while reading; 0 = never cache)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from evonas_jax.data import preprocess as preprocess_lib

log = logging.getLogger(__name__)
_WARNED_UNKNOWN: set[tuple[str, ...]] = set()

SOURCES = ("fashion_mnist", "digits", "tfds")
CHANNELS = (1, 3)
TFDS_DIR_ENV = "EVONAS_TFDS_DIR"
# Fashion-MNIST training-set pixel statistics in [0, 1] units.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def get_config_defaults() -> ml_collections.ConfigDict:
    """Data config with defaults for Fashion-MNIST (28x28x1, 55k/5k/10k)."""
    cfg = ml_collections.ConfigDict()
    cfg.source = "fashion_mnist"
    cfg.name = ""
    # Typed str references (default None) so `--config.data.tfds_data_dir=DIR` works on the
    # command line (ml_collections cannot override a plain None field).
    cfg.data_dir = ml_collections.FieldReference(None, field_type=str)
    cfg.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
    # object-typed: these accept an int or a float (val_size) and a float or
    # a tuple (mean/std), which ConfigDict's type lock would otherwise refuse.
    cfg.val_size = ml_collections.FieldReference(5000, field_type=object)
    cfg.allow_fallback = True
    cfg.image_size = 28
    cfg.channels = 1
    cfg.crop_padding = 2
    cfg.random_flip = True
    cfg.mean = ml_collections.FieldReference(FASHION_MNIST_MEAN, field_type=object)
    cfg.std = ml_collections.FieldReference(FASHION_MNIST_STD, field_type=object)
    cfg.image_key = "image"
    cfg.label_key = "label"
    cfg.train_split = "train"
    cfg.val_split = "validation"
    cfg.test_split = "test"
    cfg.num_threads = 2
    cfg.prefetch = 4
    cfg.cache_max_mb = 4096
    return cfg


def default_tfds_data_dir() -> str:
    """$EVONAS_TFDS_DIR if set, else ~/tensorflow_datasets."""
    return os.environ.get(TFDS_DIR_ENV) or os.path.expanduser(os.path.join("~", "tensorflow_datasets"))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A validated, normalised data config (mean/std are per-channel tuples)."""

    source: str
    name: str
    data_dir: str | None
    tfds_data_dir: str
    val_size: int | float
    allow_fallback: bool
    image_size: int
    channels: int
    crop_padding: int
    random_flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_key: str
    label_key: str
    train_split: str
    val_split: str
    test_split: str
    num_threads: int
    prefetch: int
    cache_max_mb: int

    def preprocessor(self) -> preprocess_lib.Preprocessor:
        return preprocess_lib.Preprocessor(
            image_size=self.image_size, channels=self.channels, crop_padding=self.crop_padding,
            random_flip=self.random_flip, mean=self.mean, std=self.std)


# Sizes / counts end up in int32 numpy and XLA arithmetic: larger values overflow there.
INT_MAX = 2**31 - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and abs(v) <= INT_MAX


def _per_channel(field: str, v: Any, channels: int, positive: bool) -> tuple[float, ...]:
    vals = tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else (v,)
    if not vals or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in vals):
        raise ValueError(f"data.{field} must be a float or a tuple of {channels} floats; got {v!r}")
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"data.{field} has {len(vals)} values but channels={channels}; give 1 or {channels}")
    # NaN compares False with everything, so without this NaN (and inf) passed as a mean / std
    # and normalised every image to NaN.
    if not all(math.isfinite(x) for x in vals):
        raise ValueError(f"data.{field} must be finite; got {v!r}")
    if positive and any(x <= 0 for x in vals):
        raise ValueError(f"data.{field} must be > 0; got {v!r}")
    return tuple(float(x) for x in vals)


def validate(data_cfg: Mapping | ml_collections.ConfigDict) -> DataSpec:
    """Checks a data config early; missing fields take the defaults.

    Raises:
      ValueError: naming the field (``data.<field>``) and the allowed values.
    """
    defaults = get_config_defaults().to_dict()
    given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    unknown = sorted(set(given) - set(defaults))
    if unknown and tuple(unknown) not in _WARNED_UNKNOWN:  # Not an error: the trainer may keep its own keys here.
        _WARNED_UNKNOWN.add(tuple(unknown))
        log.warning("Ignoring unknown data config fields %s (known: %s)", unknown, sorted(defaults))
    c = {**defaults, **{k: v for k, v in given.items() if k in defaults}}

    if c["source"] not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}; got {c['source']!r}")
    if c["source"] == "tfds" and not (isinstance(c["name"], str) and c["name"]):
        raise ValueError("data.name must name the TFDS dataset when data.source == 'tfds' (e.g. 'cifar10')")
    for f in ("data_dir", "tfds_data_dir"):
        if c[f] is not None and not isinstance(c[f], (str, os.PathLike)):
            raise ValueError(f"data.{f} must be a path string or None; got {c[f]!r}")
    v = c["val_size"]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0 or (not _is_int(v) and not 0 < v < 1):
        raise ValueError(f"data.val_size must be an int >= 0 (examples) or a float in (0, 1) (fraction); got {v!r}")
    for f in ("allow_fallback", "random_flip"):
        if not isinstance(c[f], bool):
            raise ValueError(f"data.{f} must be True or False; got {c[f]!r}")
    if not _is_int(c["image_size"]) or c["image_size"] < 1:
        raise ValueError(f"data.image_size must be an int in [1, {INT_MAX}]; got {c['image_size']!r}")
    if c["channels"] not in CHANNELS or not _is_int(c["channels"]):
        raise ValueError(f"data.channels must be one of {CHANNELS}; got {c['channels']!r}")
    if not _is_int(c["crop_padding"]) or not 0 <= c["crop_padding"] <= c["image_size"]:
        raise ValueError(f"data.crop_padding must be an int in [0, image_size={c['image_size']}]; "
                         f"got {c['crop_padding']!r}")
    for f in ("num_threads", "prefetch", "cache_max_mb"):
        if not _is_int(c[f]) or c[f] < 0:
            raise ValueError(f"data.{f} must be an int in [0, {INT_MAX}]; got {c[f]!r}")
    for f in ("image_key", "label_key", "train_split", "val_split", "test_split"):
        if not isinstance(c[f], str) or not c[f]:
            raise ValueError(f"data.{f} must be a non-empty string; got {c[f]!r}")
    mean = _per_channel("mean", c["mean"], c["channels"], positive=False)
    std = _per_channel("std", c["std"], c["channels"], positive=True)
    return DataSpec(
        source=c["source"], name=c["name"] or "",
        data_dir=os.fspath(c["data_dir"]) if c["data_dir"] is not None else None,
        tfds_data_dir=os.fspath(c["tfds_data_dir"]) if c["tfds_data_dir"] else default_tfds_data_dir(),
        val_size=c["val_size"], allow_fallback=c["allow_fallback"], image_size=int(c["image_size"]),
        channels=int(c["channels"]), crop_padding=int(c["crop_padding"]), random_flip=c["random_flip"],
        mean=mean, std=std, image_key=c["image_key"], label_key=c["label_key"],
        train_split=c["train_split"], val_split=c["val_split"], test_split=c["test_split"],
        num_threads=int(c["num_threads"]), prefetch=int(c["prefetch"]), cache_max_mb=int(c["cache_max_mb"]),
    )


__all__ = ["SOURCES", "DataSpec", "default_tfds_data_dir", "get_config_defaults", "validate"]
