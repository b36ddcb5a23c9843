"""Dense-prediction batches (image + depth and/or label map) from a random-access TFDS source.

Per example, in order (train; eval skips the random steps and centre-crops instead):

  decode     image uint8 -> float32 [0, 255] RGB; depth * depth_scale, non-finite/<= 0 -> 0;
             label map: channel `label_channel` (if 3-D), reduce_zero_label (0 -> ignore,
             c -> c - 1), stored ignore values kept
  kb_crop    KITTI benchmark crop: bottom 352 rows, centred 1216 columns (train and eval)
  resize     to `resize_to` (H, W) or shorter side to `resize_short_side`: the image
             bilinear (antialiased, `preprocess.resize_bilinear`), depth and label
             **nearest** (a depth value is always a measured one: an invalid 0 is never
             blended into valid neighbours, nor a label into another class)
  pad        bottom/right up to crop_size if smaller: image 0, depth 0, label ignore_label
  crop       random crop_size window (train) / centre window (eval)
  flip       horizontal, image, depth and label together (train, random_flip)
  eval crop  eval_crop="garg" (KITTI): ground truth outside the Garg crop of the ORIGINAL
             full-resolution frame is set to 0 (invalid) in eval examples. The crop region is
             computed on the decoded frame (e.g. 375 x 1242) and goes through the same KB crop,
             nearest resize, pad and centre crop as the depth map, so a ground-truth pixel
             counts iff the full-frame pixel it came from lies inside the crop. Without a
             resize this is exactly the reference evaluation, which pastes the 352 x 1216
             prediction back into the full frame and crops there: for the KITTI frame sizes the
             Garg crop lies inside the KB crop, so no pixel is lost. With a resize the metric is
             on the resized ground truth, not on the full-resolution one.
  jitter     brightness x in [1 - b, 1 + b], then contrast around the image mean by
             c in [1 - k, 1 + k], clipped to [0, 255] (train, image only)
  normalise  (x / 255 - mean) / std

Randomness is `preprocess.example_random_bits(seed, example index, epoch, stream)`, so a
batch is a pure function of (seed, position): deterministic, resumable, thread-safe. The
index/shuffle/shard machinery and the checkpointable `DataIterator` are those of
`evonas_jax.data.pipeline` (host k owns examples k, k + P, ...; eval pads the last batch
and marks real rows in "mask").
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import grain
import numpy as np

from evonas_jax.data import pipeline as pipeline_lib
from evonas_jax.data import preprocess as preprocess_lib

KB_CROP = (352, 1216)
# Random streams of the dense augmentations (classification uses 1-3).
STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP, STREAM_BRIGHT, STREAM_CONTRAST = 11, 12, 13, 14, 15
TASKS = ("depth", "segmentation", "both")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """int (out_size,) source index of each output pixel (half-pixel centres, floor)."""
  idx = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def resize_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Nearest-neighbour resize of (H, W[, C]) by index gathering (never mixes values)."""
  h, w = x.shape[:2]
  if (h, w) == (out_h, out_w):
    return x
  return x[nearest_indices(h, out_h)[:, None], nearest_indices(w, out_w)[None, :]]


def _uniform(bits: np.ndarray) -> np.ndarray:
  """uint64 -> float64 in [0, 1) (top 53 bits)."""
  return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass(frozen=True)
class DenseTransform:
  """Decoding + geometry + augmentation settings (see module doc); built by `dense.validate`.

  crop_size, resize_to: (H, W); resize_to None = keep; resize_short_side 0 = off.
  label_channel: channel of a (H, W, C) label image to use; -1 = the map is (H, W) or (H, W, 1).
  """

  task: str
  image_key: str = "image"
  depth_key: str = "depth"
  label_key: str = "segmentation"
  label_channel: int = -1
  reduce_zero_label: bool = False
  ignore_label: int = 255
  depth_scale: float = 1.0
  resize_to: tuple[int, int] | None = None
  resize_short_side: int = 0
  kb_crop: bool = False
  crop_size: tuple[int, int] = (64, 64)
  random_flip: bool = True
  brightness: float = 0.0
  contrast: float = 0.0
  mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
  std: tuple[float, float, float] = (0.229, 0.224, 0.225)
  eval_crop: str = "none"      # "garg": applied to eval ground truth on the full frame (above)

  @property
  def has_depth(self) -> bool:
    return self.task in ("depth", "both")

  @property
  def has_label(self) -> bool:
    return self.task in ("segmentation", "both")

  # ---------------------------------------------------------------- per example

  def decode(self, record: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """record -> (image f32 (H, W, 3) in [0, 255], depth f32 (H, W) | None, label i32 (H, W) | None)."""
    img = np.asarray(record[self.image_key])
    if img.ndim == 2:
      img = img[..., None]
    if img.shape[-1] == 1:
      img = np.repeat(img, 3, axis=-1)
    img = img[..., :3].astype(np.float32)  # RGBA: drop alpha.
    depth = label = None
    if self.has_depth:
      d = np.asarray(record[self.depth_key], np.float32)
      if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
      d = d * np.float32(self.depth_scale)
      depth = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
    if self.has_label:
      lab = np.asarray(record[self.label_key])
      if lab.ndim == 3:
        lab = lab[..., self.label_channel] if self.label_channel >= 0 else lab[..., 0]
      lab = lab.astype(np.int32)
      if self.reduce_zero_label:  # ADE20K convention: 0 = "other" -> ignore, classes 1..K -> 0..K-1.
        ignore = (lab == 0) | (lab == self.ignore_label)
        lab = np.where(ignore, self.ignore_label, lab - 1)
      label = lab
    for name, a in (("depth", depth), ("label", label)):
      if a is not None and a.shape != img.shape[:2]:
        raise ValueError(f"{name} map shape {a.shape} does not match image shape {img.shape[:2]}")
    return img, depth, label

  def geometry(self, img, depth, label, region=None):
    """KB crop, resize and pad (deterministic part): [image, depth, label, region], each
    (H, W[, C]) or None; `region` (bool (H, W), the eval crop on the decoded frame) is
    transformed like a label map (nearest, padded with False)."""
    h, w = img.shape[:2]
    maps = [img, depth, label, region]
    if self.kb_crop:
      kh, kw = KB_CROP
      if h < kh or w < kw:
        raise ValueError(f"kb_crop needs images of at least {KB_CROP}; got {(h, w)}")
      top, left = h - kh, (w - kw) // 2
      maps = [None if m is None else m[top:top + kh, left:left + kw] for m in maps]
      h, w = kh, kw
    out = self.resize_to
    if out is None and self.resize_short_side:
      s = self.resize_short_side / min(h, w)
      out = (max(1, round(h * s)), max(1, round(w * s)))
    if out is not None and tuple(out) != (h, w):
      img = preprocess_lib.resize_bilinear(maps[0][None], int(out[0]), int(out[1]))[0]
      maps = [img] + [None if m is None else resize_nearest(m, int(out[0]), int(out[1])) for m in maps[1:]]
      h, w = int(out[0]), int(out[1])
    ch, cw = self.crop_size
    if h < ch or w < cw:
      ph, pw = max(0, ch - h), max(0, cw - w)
      fills = (0.0, 0.0, self.ignore_label, False)
      maps = [None if m is None else np.pad(m, ((0, ph), (0, pw)) + ((0, 0),) * (m.ndim - 2), constant_values=f)
              for m, f in zip(maps, fills)]
    return maps

  def _finish(self, img, depth, label) -> dict[str, np.ndarray]:
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    out = {"image": (img * (1.0 / (255.0 * std)) - mean / std).astype(np.float32)}
    if depth is not None:
      out["depth"] = np.ascontiguousarray(depth, np.float32)
    if label is not None:
      out["label"] = np.ascontiguousarray(label, np.int32)
    return out

  def prepare(self, record: dict) -> tuple:
    """The deterministic part, decode + geometry: (image, depth | None, label | None,
    region | None); cacheable. region: bool (H, W), the Garg crop of the decoded full frame
    after geometry (eval_crop="garg" with depth), else None."""
    img, depth, label = self.decode(record)
    region = None
    if self.eval_crop == "garg" and depth is not None:
      from evonas_jax.metrics import crop_mask
      region = crop_mask(img.shape[:2], "garg")   # the decoded frame is the full frame
    return tuple(self.geometry(img, depth, label, region))

  def eval_example(self, record: dict, maps: tuple | None = None) -> dict[str, np.ndarray]:
    """Unaugmented: geometry + centre crop + eval crop + normalise (`maps` = `prepare(record)`
    if cached)."""
    maps = maps if maps is not None else self.prepare(record)
    img, depth, label = maps[:3]
    region = maps[3] if len(maps) > 3 else None
    ch, cw = self.crop_size
    h, w = img.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    sl = (slice(top, top + ch), slice(left, left + cw))
    if depth is not None:
      depth = depth[sl]
      if region is not None:
        depth = np.where(region[sl], depth, np.float32(0.0))   # 0 = invalid ground truth
    return self._finish(img[sl], depth, None if label is None else label[sl])

  def train_example(self, record: dict | None, rnd: dict[str, float | int | bool],
                    maps: tuple | None = None) -> dict[str, np.ndarray]:
    """Augmented with the random draws `rnd` (uniforms "crop_y", "crop_x", "bright", "contrast"; bool "flip").

    `maps` = `prepare(record)` when the caller has it cached (then `record` may be None).
    """
    # Training never applies the eval crop: the loss sees every valid ground-truth pixel.
    img, depth, label = (maps if maps is not None else self.prepare(record))[:3]
    ch, cw = self.crop_size
    h, w = img.shape[:2]
    top = min(int(rnd["crop_y"] * (h - ch + 1)), h - ch)
    left = min(int(rnd["crop_x"] * (w - cw + 1)), w - cw)
    sl = (slice(top, top + ch), slice(left, left + cw))
    img = img[sl]
    depth = None if depth is None else depth[sl]
    label = None if label is None else label[sl]
    if self.random_flip and rnd["flip"]:
      img, depth, label = (None if m is None else m[:, ::-1] for m in (img, depth, label))
    if self.brightness:
      img = img * np.float32(1.0 + self.brightness * (2.0 * rnd["bright"] - 1.0))
    if self.contrast:
      m = img.mean()
      img = (img - m) * np.float32(1.0 + self.contrast * (2.0 * rnd["contrast"] - 1.0)) + m
    if self.brightness or self.contrast:
      img = np.clip(img, 0.0, 255.0)
    return self._finish(img, depth, label)

  def random_draws(self, seed: int, indices: np.ndarray, epochs: np.ndarray) -> list[dict]:
    """Per-example random draws, a pure function of (seed, index, epoch)."""
    bits = {name: preprocess_lib.example_random_bits(seed, indices, epochs, s) for name, s in (
        ("crop_y", STREAM_CROP_Y), ("crop_x", STREAM_CROP_X), ("flip", STREAM_FLIP),
        ("bright", STREAM_BRIGHT), ("contrast", STREAM_CONTRAST))}
    u = {k: _uniform(v) for k, v in bits.items() if k != "flip"}
    flip = (bits["flip"] >> np.uint64(63)).astype(bool)
    return [{"crop_y": u["crop_y"][i], "crop_x": u["crop_x"][i], "bright": u["bright"][i],
             "contrast": u["contrast"][i], "flip": bool(flip[i])} for i in range(len(indices))]

  def empty_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    ch, cw = self.crop_size
    out = {"image": np.zeros((batch_size, ch, cw, 3), np.float32)}
    if self.has_depth:
      out["depth"] = np.zeros((batch_size, ch, cw), np.float32)
    if self.has_label:
      out["label"] = np.full((batch_size, ch, cw), self.ignore_label, np.int32)
    return out


class PreparedCache:
  """In-RAM cache of `DenseTransform.prepare` outputs, by example index.

  Decoding a 480 x 640 RGB-D record (~20 ms) and resizing it (~30 ms) dominate the cost of a
  batch; both are deterministic, so small datasets (the local scenes) keep the prepared maps.
  Entries are added until `max_bytes` is reached, then the cache stops growing (no eviction:
  with shuffled access every entry is equally likely to be hit). Shared by grain's reader
  threads: dict get/set are atomic in CPython; a race can at worst overshoot `max_bytes` by
  one entry. Cached maps are never written to (the batch code only slices and copies them).
  """

  def __init__(self, max_bytes: int):
    self.max_bytes = int(max_bytes)
    self.nbytes = 0
    self._d: dict[int, tuple] = {}

  def get(self, index: int):
    return self._d.get(index)

  def put(self, index: int, maps: tuple) -> None:
    size = sum(m.nbytes for m in maps if m is not None)
    if self.nbytes + size <= self.max_bytes and index not in self._d:
      self._d[index] = maps
      self.nbytes += size


def _prepared(source: Any, transform: "DenseTransform", indices, cache: PreparedCache | None) -> list[tuple]:
  """Prepared maps of each index, from the cache or read + prepared (one __getitems__ for the misses)."""
  idx = [int(i) for i in indices]
  out = [cache.get(i) if cache is not None else None for i in idx]
  miss = [j for j, m in enumerate(out) if m is None]
  if miss:
    for j, rec in zip(miss, _records(source, [idx[j] for j in miss])):
      out[j] = transform.prepare(rec)
      if cache is not None:
        cache.put(idx[j], out[j])
  return out


def _records(source: Any, indices) -> list[dict]:
  keys = [int(i) for i in indices]
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(keys)) if getitems is not None else [source[k] for k in keys]


class _DenseTrainBatch:
  """grain map: batch number -> {"image", "depth"/"label"[, "index"]}."""

  def __init__(self, indices_fn, source, transform: DenseTransform, seed: int, return_index: bool,
               cache: PreparedCache | None = None):
    self.indices_fn, self.source, self.t, self.seed, self.return_index = (
        indices_fn, source, transform, seed, return_index)
    self.cache = cache

  def __call__(self, b: int):
    indices, epochs = self.indices_fn(b)
    draws = self.t.random_draws(self.seed, indices, epochs)
    maps = _prepared(self.source, self.t, indices, self.cache)
    exs = [self.t.train_example(None, d, maps=m) for m, d in zip(maps, draws)]
    out = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
    if self.return_index:
      out["index"] = np.asarray(indices, np.int64)
    return out


class _DenseEvalBatch:
  """grain map: batch number -> padded batch + "mask" (B,) float32 (1 = real row)."""

  def __init__(self, source, transform: DenseTransform, local_indices, batch_size: int, return_index: bool,
               cache: PreparedCache | None = None):
    self.source, self.t, self.local, self.bs, self.return_index = (
        source, transform, local_indices, batch_size, return_index)
    self.cache = cache

  def __call__(self, b: int):
    idx = self.local[b * self.bs:(b + 1) * self.bs]
    n = len(idx)
    out = self.t.empty_batch(self.bs)
    for i, m in enumerate(_prepared(self.source, self.t, idx, self.cache) if n else []):
      for k, v in self.t.eval_example(None, maps=m).items():
        out[k][i] = v
    mask = np.zeros((self.bs,), np.float32)
    mask[:n] = 1.0
    out["mask"] = mask
    if self.return_index:
      index = np.full((self.bs,), -1, np.int64)
      index[:n] = idx
      out["index"] = index
    return out


def _fingerprint(transform: DenseTransform) -> dict:
  """JSON-friendly record of the settings (a restored iterator state must match them)."""
  # eval_crop changes eval ground truth only, never a training batch: left out so that
  # training iterator states saved before the field existed still restore.
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(transform).items()
          if k != "eval_crop"}


def dense_train_iterator(
    source: Any,
    transform: DenseTransform,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
    return_index: bool = False,
    cache: PreparedCache | None = None,
) -> pipeline_lib.DataIterator:
  """Infinite shuffled, augmented batches of this host's shard (see module doc).

  Returns:
    DataIterator of {"image": f32 (B, h, w, 3), "depth": f32 (B, h, w) (0 = invalid),
    "label": i32 (B, h, w)} (keys per task), (h, w) = crop_size.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  n = len(source)
  pi, pc = pipeline_lib._check_shard(process_index, process_count, n)
  indices_fn = pipeline_lib._TrainIndices(n, batch_size, seed, pi, pc)
  ds = grain.MapDataset.range(sys.maxsize).map(
      _DenseTrainBatch(indices_fn, source, transform, seed, return_index, cache))
  fp = {"num_examples": n, "batch_size": batch_size, "seed": int(seed), "process_index": pi,
        "process_count": pc, "transform": _fingerprint(transform)}
  return pipeline_lib.DataIterator(ds, kind="dense_train", fingerprint=fp, batch_size=batch_size,
                                   num_examples=indices_fn.n_local,
                                   steps_per_epoch=indices_fn.n_local // batch_size,
                                   num_threads=num_threads, prefetch=prefetch)


def dense_eval_iterator(
    source: Any,
    transform: DenseTransform,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
    return_index: bool = False,
    cache: PreparedCache | None = None,
) -> pipeline_lib.DataIterator:
  """One unaugmented pass over this host's shard, padded last batch with "mask" (B,)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  n = len(source)
  pi, pc = pipeline_lib._check_shard(process_index, process_count, n)
  local = np.arange(pi, n, pc, dtype=np.int64)
  num_batches = math.ceil(math.ceil(n / pc) / batch_size)
  ds = grain.MapDataset.range(num_batches).map(
      _DenseEvalBatch(source, transform, local, batch_size, return_index, cache))
  fp = {"num_examples": n, "batch_size": batch_size, "process_index": pi, "process_count": pc,
        "transform": _fingerprint(transform)}
  return pipeline_lib.DataIterator(ds, kind="dense_eval", fingerprint=fp, batch_size=batch_size,
                                   num_examples=len(local), num_batches=num_batches,
                                   num_threads=num_threads, prefetch=prefetch)


__all__ = ["KB_CROP", "TASKS", "DenseTransform", "PreparedCache", "dense_eval_iterator", "dense_train_iterator",
           "nearest_indices", "resize_nearest"]
