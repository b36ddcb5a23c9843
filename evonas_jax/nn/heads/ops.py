"""Shared decoder ops, channels-last (B, H, W, C), with PyTorch semantics where the official
decoders depend on them: PixelShuffle channel order, AdaptiveAvgPool2d bins, bilinear resize
(align_corners True/False), Conv2d padding k//2, BatchNorm momentum/eps.

Sizes are static, so the interpolation taps are computed in numpy at trace time: bilinear
resizing is two static gathers and a lerp per axis (2 taps, O(output) work), adaptive pooling a
small static averaging matrix (its outputs are tiny: 20x20, 12x12, strips). Both are exact
PyTorch arithmetic (no antialiasing).
"""
from __future__ import annotations

import flax.linen as nn

import jax.numpy as jnp
import numpy as np

from evonas_jax.nn.layers import BN_MOMENTUM


def conv(features: int, k: int, *, use_bias: bool = True, name: str | None = None) -> nn.Conv:
  """k x k conv, stride 1, PyTorch padding k//2 (same size for odd k)."""
  pad = ((k // 2, k // 2),) * 2
  return nn.Conv(features, (k, k), padding=pad, use_bias=use_bias, name=name)


def batch_norm(train: bool, name: str, axis_name: str | None = None) -> nn.BatchNorm:
  """PyTorch BatchNorm2d defaults (momentum 0.1 == flax 0.9, eps 1e-5); axis_name = SyncBN."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5,
                      name=name,
                      axis_name=axis_name if train else None)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm [-> ReLU]: mmcv's ConvModule. kernel: (kh, kw), odd."""
  features: int
  kernel: tuple[int, int] = (3, 3)
  relu: bool = True
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    kh, kw = self.kernel
    x = nn.Conv(self.features, (kh, kw), padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
                use_bias=False, name="conv")(x)
    x = batch_norm(train, "bn", self.bn_axis_name)(x)
    return nn.relu(x) if self.relu else x


def pixel_shuffle(x, r: int):
  """torch.nn.PixelShuffle(r) in NHWC: (B, H, W, C*r*r) -> (B, H*r, W*r, C) with
  out[h*r+i, w*r+j, c] = in[h, w, c*r*r + i*r + j] (PyTorch's channel order)."""
  b, h, w, crr = x.shape
  if crr % (r * r):
    raise ValueError(f"pixel_shuffle: channels {crr} not divisible by r*r = {r * r}")
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)   # (B, H, i, W, j, C)
  return x.reshape(b, h * r, w * r, c)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix of torch AdaptiveAvgPool along one axis: bin i covers
  [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)). Bins repeat input rows when n_out > n_in."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def bilinear_taps(n_in: int, n_out: int, align_corners: bool):
  """Static taps of torch F.interpolate(mode="bilinear") along one axis: (i0, i1, lam), each
  (n_out,), with out[o] = (1 - lam[o]) * in[i0[o]] + lam[o] * in[i1[o]].

  align_corners=False: src = (dst + 0.5) * n_in / n_out - 0.5, clamped below at 0 (PyTorch);
  align_corners=True: src = dst * (n_in - 1) / (n_out - 1).
  """
  o = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
  else:
    src = np.maximum((o + 0.5) * n_in / n_out - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def _lerp_axis(x, axis: int, n_out: int, align_corners: bool):
  i0, i1, lam = bilinear_taps(x.shape[axis], n_out, align_corners)
  shape = [1] * x.ndim
  shape[axis] = n_out
  lam = jnp.asarray(lam.reshape(shape), x.dtype)
  return jnp.take(x, i0, axis=axis) * (1 - lam) + jnp.take(x, i1, axis=axis) * lam


def _separable(x, mh: np.ndarray, mw: np.ndarray):
  """Applies (Ho, H) and (Wo, W) matrices to x (B, H, W, C) -> (B, Ho, Wo, C)."""
  x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(mh, x.dtype), x)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(mw, x.dtype), x)


def resize_bilinear(x, size: tuple[int, int], align_corners: bool = False):
  """x (B, H, W, C) -> (B, size[0], size[1], C), torch bilinear semantics (no antialias)."""
  if x.shape[1] != size[0]:
    x = _lerp_axis(x, 1, size[0], align_corners)
  if x.shape[2] != size[1]:
    x = _lerp_axis(x, 2, size[1], align_corners)
  return x


def adaptive_avg_pool(x, size: tuple[int | None, int | None]):
  """torch AdaptiveAvgPool2d(size) on x (B, H, W, C); None keeps that axis."""
  h, w = x.shape[1:3]
  oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
  return _separable(x, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))
