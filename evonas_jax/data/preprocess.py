"""Vectorised, host-side (numpy) image preprocessing for whole batches.

Per-example randomness is a pure function of (seed, example index, epoch,
stream) via a counter-based hash (splitmix64), never of global RNG state, so
a batch is reproducible from its indices alone. That makes the pipeline
deterministic and resumable from a checkpointed position, with any number of
reader threads.

Order of operations (train): channel conversion -> resize to `image_size`
(shorter side, then centre crop, bilinear) -> pad-then-random-crop by
`crop_padding` output pixels -> random horizontal flip -> normalise.
Eval skips the two random steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

# Luma weights (ITU-R BT.601) for RGB -> grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Independent random streams per example.
STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP = 1, 2, 3


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def example_random_bits(seed: int, indices: np.ndarray, epochs: np.ndarray, stream: int) -> np.ndarray:
    """64 random bits per example, a pure function of its arguments.

    Args:
      seed: pipeline seed.
      indices: int (B,) global example indices.
      epochs: int (B,) epoch of each example.
      stream: which random quantity (crop y, crop x, flip, ...).

    Returns:
      uint64 (B,).
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + np.uint64(stream))
        h = _splitmix64(key ^ np.asarray(indices, dtype=np.int64).astype(np.uint64))
        return _splitmix64(h ^ (np.asarray(epochs, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


@functools.lru_cache(maxsize=64)
def linear_resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of 1-D bilinear resampling.

    Same convention as ``jax.image.resize(method="linear", antialias=True)``:
    half-pixel centres, a triangle kernel widened by the downscale factor
    when shrinking (anti-aliasing), rows normalised to sum to 1.
    """
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0)
    sample = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
    dist = np.abs(sample[:, None] - np.arange(in_size, dtype=np.float64)[None, :]) / kernel_scale
    w = np.maximum(0.0, 1.0 - dist)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resizes float32 (B, H, W, C) to (B, out_h, out_w, C) with two matmuls."""
    b, h, w, c = x.shape
    if (h, w) == (out_h, out_w):
        return x
    wy = linear_resize_weights(h, out_h)  # (out_h, H)
    wx = linear_resize_weights(w, out_w)  # (out_w, W)
    y = np.matmul(wy, x.reshape(b, h, w * c)).reshape(b, out_h, w, c)    # rows
    y = np.matmul(wx, y.reshape(b * out_h, w, c))  # cols: (B*out_h, out_w, C)
    return y.reshape(b, out_h, out_w, c)


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(B, H, W, C_in) -> (B, H, W, channels): gray->RGB repeats, RGB->gray uses luma."""
    c_in = x.shape[-1]
    if c_in == channels:
        return x
    if c_in == 1:
        return np.repeat(x, channels, axis=-1)
    if c_in == 3 and channels == 1:
        return np.tensordot(x.astype(np.float32), _LUMA, axes=([-1], [0]))[..., None]
    if c_in == 4 and channels == 3:  # RGBA: drop alpha.
        return x[..., :3]
    raise ValueError(f"cannot convert images with {c_in} channels to channels={channels}")


def _resize_short_side_center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """float32 (B, H, W, C) -> (B, size, size, C): scale shorter side to `size`, crop the centre.

    For square inputs this is a plain resize.
    """
    _, h, w, _ = x.shape
    if h == w:
        return resize_bilinear(x, size, size)
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    y = resize_bilinear(x, rh, rw)
    top, left = (rh - size) // 2, (rw - size) // 2
    return y[:, top:top + size, left:left + size, :]


def _as_float_batch(images, channels: int, size: int) -> np.ndarray:
    """uint8 images, (B, H, W, C) array or a list of (H, W[, C]) arrays -> float32 (B, size, size, channels) in [0, 255]."""
    if isinstance(images, np.ndarray) and images.dtype.kind == "f" and not np.isfinite(images).all():
        raise ValueError(f"images: {int(images.size - np.isfinite(images).sum())} pixel values are NaN or "
                         "infinite (expected finite values, uint8 0..255)")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        groups = [images]
    else:
        images = [im[..., None] if im.ndim == 2 else im for im in images]
        for im in images:
            if np.asarray(im).dtype.kind == "f" and not np.isfinite(im).all():
                raise ValueError("images: NaN or infinite pixel values (expected finite values, uint8 0..255)")
        if len({im.shape for im in images}) == 1:
            groups = [np.stack(images)]
        else:  # Variable sizes (e.g. ImageNet): one resize per image.
            groups = [im[None] for im in images]
    out = [_resize_short_side_center_crop(convert_channels(g, channels).astype(np.float32), size) for g in groups]
    return out[0] if len(out) == 1 else np.concatenate(out, axis=0)


def crop_and_flip(x: np.ndarray, pad: int, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Per-example pad-then-crop and horizontal flip, as one gather.

    Args:
      x: (B, H, W, C) images.
      pad: zero padding on each side, in pixels.
      dy, dx: int (B,) crop offsets in [0, 2 * pad].
      flip: bool (B,) mirror left-right.

    Returns:
      (B, H, W, C), same dtype as x.
    """
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    rows = dy[:, None] + np.arange(h)[None, :]                              # (B, H)
    cols = np.where(flip[:, None], w - 1 - np.arange(w)[None, :], np.arange(w)[None, :]) + dx[:, None]  # (B, W)
    return xp[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Turns uint8 image batches into normalised float32 (B, image_size, image_size, channels).

    mean/std are per channel in [0, 1] pixel units (length 1 broadcasts).
    """

    image_size: int
    channels: int
    crop_padding: int = 0
    random_flip: bool = False
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    def __post_init__(self):
        # NaN / inf / zero would turn every pixel into NaN or inf downstream, silently.
        for name, vals, positive in (("mean", self.mean, False), ("std", self.std, True)):
            try:
                a = np.asarray(vals, np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"{name}={vals!r}: expected numbers (one, or one per channel)") from None
            if a.size == 0 or not np.isfinite(a).all() or (positive and not (a > 0).all()):
                raise ValueError(f"{name}={tuple(vals)!r}: expected finite numbers"
                                 + (" > 0" if positive else "") + " (one, or one per channel)")

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        # (x / 255 - mean) / std as one multiply-add.
        return (x * (1.0 / (255.0 * std)) - mean / std).astype(np.float32, copy=False)

    def eval(self, images) -> np.ndarray:
        """uint8 (B, H, W, C) or list of images -> float32 (B, S, S, channels), no augmentation."""
        return self._normalize(_as_float_batch(images, self.channels, self.image_size))

    def train(self, images, indices: np.ndarray, epochs: np.ndarray, seed: int) -> np.ndarray:
        """Like `eval`, plus random crop/flip keyed by (seed, indices (B,), epochs (B,))."""
        x = _as_float_batch(images, self.channels, self.image_size)
        b = x.shape[0]
        p = self.crop_padding
        if p or self.random_flip:
            if p:
                dy = (example_random_bits(seed, indices, epochs, STREAM_CROP_Y) % np.uint64(2 * p + 1)).astype(np.int64)
                dx = (example_random_bits(seed, indices, epochs, STREAM_CROP_X) % np.uint64(2 * p + 1)).astype(np.int64)
            else:
                dy = dx = np.zeros(b, np.int64)
            if self.random_flip:
                flip = (example_random_bits(seed, indices, epochs, STREAM_FLIP) >> np.uint64(63)).astype(bool)
            else:
                flip = np.zeros(b, bool)
            x = crop_and_flip(x, p, dy, dx, flip)
        return self._normalize(x)
