"""Teacher outputs precomputed on disk, keyed by example index (research/evonas.md §10 item 5).

For teachers too large to run during supernet training (a foundation model), run the teacher once
over the training split and store its feature map (and, when it has them, its logits) per example:

  store_dir/
    meta.json        {"format": 1, "num_examples", "feature_shape": [Ht, Wt, C], "dtype", "teacher",
                      "grid": [Ht, Wt], "has_logits", "logits_shape", "data": {...}, ...}
    features.npy     (num_examples, Ht, Wt, C), read through a memmap
    logits.npy       (num_examples, K), optional

The example index is the position in the split that was read, the same number the data pipeline
returns as "index" (`evonas_jax.data.pipeline.train_iterator(..., return_index=True)`).

**Augmentation.** Stored features are those of the *unaugmented* (eval-preprocessed) images. They
only match a training batch when training augmentation is off (crop_padding=0, random_flip=False),
or when the augmentation is applied to the looked-up feature map too (a flip of the image is a
flip of the grid; a pixel-level random crop generally is not a whole-cell shift). The trainer
should refuse stored features with random crops/flips; `TeacherStore.check_data` does that check.

A store is written to a temporary directory and renamed into place when complete, so a crash never
leaves a half-written store that looks valid, and an existing store is never overwritten.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
FEATURES_FILE = "features.npy"
LOGITS_FILE = "logits.npy"
DTYPES = ("float32", "float16")


def _as_pair(item) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(indices, features[, logits]) from one item of `features_iter`."""
  if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
    raise ValueError("write_store: each item of features_iter must be (indices (B,), features (B, Ht, Wt, C)) "
                     f"or (indices, features, logits (B, K)); got {type(item).__name__}")
  idx = np.asarray(item[0]).astype(np.int64).reshape(-1)
  feats = np.asarray(item[1])
  logits = np.asarray(item[2]) if len(item) == 3 and item[2] is not None else None
  return idx, feats, logits


def write_store(path: str | os.PathLike, features_iter: Iterable, meta: Mapping[str, Any]) -> str:
  """Writes a teacher store at `path` (a new directory); returns the path.

  Args:
    path: the store directory. Must not exist (an existing store is never overwritten).
    features_iter: yields (indices int (B,), features (B, Ht, Wt, C)) or
      (indices, features, logits (B, K)); indices < 0 mark padding and are skipped. Every index in
      [0, num_examples) must be written exactly once (in any order).
    meta: must hold "num_examples" (int); optional "dtype" ("float32" default, or "float16"),
      "teacher" (a name), and anything else JSON-serialisable (kept in meta.json, e.g. "data").
  Raises:
    FileExistsError if `path` exists; ValueError for bad meta, inconsistent shapes, out-of-range,
    duplicate or missing indices (nothing is left at `path` then).
  """
  path = os.fspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"teacher store {path!r} already exists; refusing to overwrite it (delete it or "
                          "choose another path)")
  meta = dict(meta)
  n = meta.get("num_examples")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ValueError(f"write_store: meta['num_examples'] must be a positive int; got {n!r}")
  n = int(n)
  dtype = meta.setdefault("dtype", "float32")
  if dtype not in DTYPES:
    raise ValueError(f"write_store: meta['dtype']={dtype!r} not in {DTYPES}")
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp", dir=parent)
  try:
    feats_mm = logits_mm = None
    written = np.zeros((n,), bool)
    for item in features_iter:
      idx, feats, logits = _as_pair(item)
      if feats.ndim != 4 or feats.shape[0] != idx.shape[0]:
        raise ValueError(f"write_store: features must be (B, Ht, Wt, C) with B = len(indices) = {idx.shape[0]}; "
                         f"got {feats.shape}")
      if feats_mm is None:
        feats_mm = np.lib.format.open_memmap(os.path.join(tmp, FEATURES_FILE), mode="w+", dtype=dtype,
                                             shape=(n,) + feats.shape[1:])
        if logits is not None:
          logits_mm = np.lib.format.open_memmap(os.path.join(tmp, LOGITS_FILE), mode="w+", dtype=np.float32,
                                                shape=(n,) + logits.shape[1:])
      if feats.shape[1:] != feats_mm.shape[1:]:
        raise ValueError(f"write_store: feature shape changed from {feats_mm.shape[1:]} to {feats.shape[1:]}")
      if (logits is None) != (logits_mm is None):
        raise ValueError("write_store: some items carry logits and others do not")
      keep = idx >= 0
      idx = idx[keep]
      if idx.size and idx.max() >= n:
        raise ValueError(f"write_store: index {int(idx.max())} >= num_examples={n}")
      uniq, counts = np.unique(idx, return_counts=True)
      dup = np.concatenate([uniq[counts > 1], idx[written[idx]]])
      if dup.size:
        raise ValueError(f"write_store: example index {int(dup[0])} written twice")
      feats_mm[idx] = feats[keep].astype(dtype)
      if logits_mm is not None:
        logits_mm[idx] = np.asarray(logits)[keep].astype(np.float32)
      written[idx] = True
    if feats_mm is None:
      raise ValueError("write_store: features_iter yielded nothing")
    if not written.all():
      missing = np.flatnonzero(~written)
      raise ValueError(f"write_store: {missing.size} of {n} examples were never written "
                       f"(first: {missing[:5].tolist()})")
    feats_mm.flush()
    meta.update(format=FORMAT_VERSION, feature_shape=list(feats_mm.shape[1:]), grid=list(feats_mm.shape[1:3]),
                has_logits=logits_mm is not None,
                logits_shape=list(logits_mm.shape[1:]) if logits_mm is not None else None)
    meta.setdefault("teacher", "")
    if logits_mm is not None:
      logits_mm.flush()
    del feats_mm, logits_mm
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    os.rename(tmp, path)  # Atomic on one filesystem: a store exists only once it is complete.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


class TeacherStore:
  """Read access to a store written by `write_store` (memory-mapped; cheap to open)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    meta_file = os.path.join(self.path, META_FILE)
    if not os.path.isfile(meta_file):
      raise FileNotFoundError(f"{self.path!r} is not a teacher store (no {META_FILE}); build one with "
                              "evonas_jax.teacher_store.compute_store")
    with open(meta_file) as f:
      self.meta = json.load(f)
    if self.meta.get("format") != FORMAT_VERSION:
      raise ValueError(f"teacher store {self.path!r} has format {self.meta.get('format')!r}; this code reads "
                       f"format {FORMAT_VERSION}")
    self._features = np.load(os.path.join(self.path, FEATURES_FILE), mmap_mode="r")
    self._logits = (np.load(os.path.join(self.path, LOGITS_FILE), mmap_mode="r")
                    if self.meta.get("has_logits") else None)
    if self._features.shape != (self.num_examples, *self.feature_shape):
      raise ValueError(f"teacher store {self.path!r}: {FEATURES_FILE} has shape {self._features.shape}, "
                       f"meta.json says {(self.num_examples, *self.feature_shape)}")

  @property
  def num_examples(self) -> int:
    return int(self.meta["num_examples"])

  @property
  def feature_shape(self) -> tuple[int, int, int]:
    """(Ht, Wt, C)."""
    return tuple(self.meta["feature_shape"])

  @property
  def grid(self) -> tuple[int, int]:
    return tuple(self.meta["grid"])

  @property
  def has_logits(self) -> bool:
    return self._logits is not None

  def _check(self, indices) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(indices).astype(np.int64)
    if idx.ndim != 1:
      raise ValueError(f"TeacherStore.lookup: indices must be 1-D (B,); got shape {idx.shape}")
    if idx.size and idx.max() >= self.num_examples:
      raise IndexError(f"TeacherStore.lookup: index {int(idx.max())} >= num_examples={self.num_examples} "
                       f"of {self.path!r} (store built for another split or dataset?)")
    pad = idx < 0
    return np.where(pad, 0, idx), pad

  def lookup(self, indices) -> np.ndarray:
    """indices int (B,) -> float32 features (B, Ht, Wt, C); index -1 (padding) gives zeros.

    Reads sorted unique rows (memmap reads are fastest in order) and scatters them back."""
    idx, pad = self._check(indices)
    uniq, inv = np.unique(idx, return_inverse=True)
    out = np.asarray(self._features[uniq], np.float32)[inv]
    out[pad] = 0.0
    return out

  def lookup_logits(self, indices) -> np.ndarray:
    """indices int (B,) -> float32 teacher logits (B, K); zeros for padding. Needs has_logits."""
    if self._logits is None:
      raise ValueError(f"teacher store {self.path!r} holds no logits (its teacher returned features only)")
    idx, pad = self._check(indices)
    out = np.asarray(self._logits[idx], np.float32)
    out[pad] = 0.0
    return out

  def check_data(self, data_cfg, split: str = "train", *, augmentation_ok: bool = False) -> None:
    """Raises ValueError if `data_cfg` does not produce the images this store was computed from.

    Compares what compute_store recorded in meta["data"] (resolved TFDS dataset, split, number of
    examples, image_size, channels, mean, std, val_size) with the config, and, unless
    `augmentation_ok`, refuses random crops/flips (stored features are of unaugmented images; see
    the module docstring). Opens the split (preparing the dataset if needed, as training does)."""
    from evonas_jax.data import api as data_api
    from evonas_jax.data import config as config_lib

    spec = config_lib.validate(data_cfg)
    if not augmentation_ok and (spec.crop_padding or spec.random_flip):
      raise ValueError(f"teacher store {self.path!r} holds features of unaugmented images, but data.crop_padding="
                       f"{spec.crop_padding} and data.random_flip={spec.random_flip}; set crop_padding=0 and "
                       "random_flip=False, or run the teacher online")
    opened = data_api.open_split(data_cfg, split)
    if len(opened.source) != self.num_examples:
      raise ValueError(f"teacher store {self.path!r} has {self.num_examples} examples but split {split!r} of the "
                       f"configured data has {len(opened.source)}")
    have = self.meta.get("data")
    if have is None:
      return  # Written without a data fingerprint (an external teacher): only the size is checked.
    want = _data_fingerprint(spec, opened)
    diff = {k: (have.get(k), want[k]) for k in want if _norm(have.get(k)) != _norm(want[k])}
    if diff:
      raise ValueError(f"teacher store {self.path!r} was computed with other data settings: "
                       + ", ".join(f"{k}: store {a!r} vs config {b!r}" for k, (a, b) in diff.items()))


def _norm(v):
  return list(v) if isinstance(v, tuple) else v


def _data_fingerprint(spec, opened) -> dict:
  """What decides the stored images: the resolved dataset (after any fallback), split, preprocessing."""
  return {"dataset": opened.name, "split": opened.split, "image_size": spec.image_size,
          "channels": spec.channels, "mean": list(spec.mean), "std": list(spec.std), "val_size": spec.val_size}


def compute_store(teacher_apply: Callable, variables, data_cfg, path: str | os.PathLike, batch_size: int = 256,
                  *, split: str = "train", teacher_name: str = "", dtype: str = "float32",
                  progress: bool = True) -> str:
  """Runs a teacher over one split (unaugmented) and writes a store at `path`; returns the path.

  Args:
    teacher_apply: f(variables, images (B, H, W, C)) -> features (B, Ht, Wt, C), or
      (logits (B, K), features) as `ViTTeacher.apply` returns (then logits are stored too).
      Jitted here.
    variables: the teacher's variables (frozen).
    data_cfg: the data config; images are eval-preprocessed (no crop, no flip).
    path: new store directory (never overwritten).
    batch_size: teacher batch size (the last batch is padded; padding is not stored).
    split: the role ("train" default, mapped through data.train_split) or a TFDS split.
    teacher_name: recorded in meta.json. dtype: "float32" or "float16" on disk.
  Run it on one host; every host can then read the store from a shared filesystem.
  """
  import jax

  from evonas_jax.data import api as data_api
  from evonas_jax.data import config as config_lib
  from evonas_jax.data import pipeline as pipeline_lib

  if os.path.exists(os.fspath(path)):
    raise FileExistsError(f"teacher store {os.fspath(path)!r} already exists; refusing to overwrite it")
  spec = config_lib.validate(data_cfg)
  opened = data_api.open_split(data_cfg, split)
  # index = position in this split's source, the same number train_iterator(return_index=True) yields.
  it = pipeline_lib.eval_iterator(opened.source, spec.preprocessor(), batch_size=batch_size,
                                  image_key=spec.image_key, label_key=spec.label_key,
                                  num_threads=spec.num_threads, prefetch=spec.prefetch, return_index=True)
  fn = jax.jit(teacher_apply)

  def batches():
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=len(it), desc=f"teacher store {os.path.basename(os.fspath(path))}", unit="batch")
    try:
      for batch in it:
        out = fn(variables, batch["image"])
        if isinstance(out, (tuple, list)):
          logits, feats = out[0], out[-1]
          yield batch["index"], np.asarray(feats), np.asarray(logits)
        else:
          yield batch["index"], np.asarray(out)
        if bar is not None:
          bar.update(1)
    finally:
      if bar is not None:
        bar.close()

  meta = {"num_examples": len(opened.source), "dtype": dtype, "teacher": teacher_name,
          "data": _data_fingerprint(spec, opened), "augmentation": "none (eval preprocessing)"}
  return write_store(path, batches(), meta)
