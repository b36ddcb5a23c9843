"""Small shared layers. Arrays are channels-last: tokens (B, H, W, C).

Elastic widths are handled by *masks*: a masked channel is exactly zero after the layer, so a
supernet at full width computes the same numbers as the sliced network (DESIGN.md invariant 1).
"""
from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Official `_init_weights`: trunc-normal std 0.02 for linear layers, zero bias.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


def Dense(features: int, *, use_bias: bool = True, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, name=name)


_DEPTHWISE_IMPL = ["shift"]


@contextlib.contextmanager
def depthwise_impl(impl: str):
  """Selects how depthwise convs run: "shift" (9 shifted multiply-adds; its backward is 3-5x
  faster than XLA:CPU's grouped-conv backward) or "xla" (lax.conv_general_dilated, which XLA's
  cost analysis sees as a conv). Both give bitwise-identical forward results in fp32 tests."""
  if impl not in ("shift", "xla"):
    raise ValueError(f"depthwise impl {impl!r} not in ('shift', 'xla')")
  old = _DEPTHWISE_IMPL[0]
  _DEPTHWISE_IMPL[0] = impl
  try:
    yield
  finally:
    _DEPTHWISE_IMPL[0] = old


def depthwise_conv3x3(x, kernel, stride: int = 1):
  """x (B, H, W, C), kernel (3, 3, 1, C), padding 1 -> (B, ceil(H/s), ceil(W/s), C)."""
  if _DEPTHWISE_IMPL[0] == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = 0.0
  for i in range(3):
    for j in range(3):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out = out + patch * kernel[i, j, 0]
  return out


class DWConv(nn.Module):
  """Depthwise 3x3 conv with PyTorch padding 1: output size ceil(H / stride). Params have
  nn.Conv's layout: kernel (3, 3, 1, C), bias (C,)."""
  features: int
  stride: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, self.features))
    y = depthwise_conv3x3(x, kernel, self.stride)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with optional channel mask (masked statistics).

  With `mask` (C,) of 0/1, mean and variance are taken over the active channels only and the
  inactive outputs are exactly 0, so the result equals LayerNorm of the sliced tensor.
  eps defaults to PyTorch's 1e-5 to match the official code.
  """
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, mask=None):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if mask is None:
      mean = x.mean(-1, keepdims=True)
      var = jnp.square(x - mean).mean(-1, keepdims=True)
      return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    n = mask.sum()
    mean = (x * mask).sum(-1, keepdims=True) / n
    var = jnp.square((x - mean) * mask).sum(-1, keepdims=True) / n
    return ((x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias) * mask


def drop_path(x, rate: float, rng, deterministic: bool):
  """Stochastic depth on the residual branch x (B, ...): drop whole samples."""
  if deterministic or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def gelu(x):
  # PyTorch nn.GELU default is the exact erf form, not the tanh approximation.
  return nn.gelu(x, approximate=False)


def inv_softplus_dt_init(key, shape, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
  """Mamba dt bias init: dt log-uniform in [dt_min, dt_max], floored, then softplus^-1."""
  u = jax.random.uniform(key, shape)
  dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
  dt = jnp.maximum(dt, dt_floor)
  return dt + jnp.log(-jnp.expm1(-dt))


def segments(sizes, full_sizes):
  """Index array selecting the leading `sizes[i]` entries of each segment of a concatenated
  axis whose segments have `full_sizes` (the OFA/AutoFormer segment-wise slicing)."""
  idx, start = [], 0
  for n, full in zip(sizes, full_sizes):
    idx.extend(range(start, start + n))
    start += full
  return jnp.asarray(idx, jnp.int32)


def take_segments(x, sizes, full_sizes, axis: int = -1):
  """The leading `sizes[i]` entries of each segment of `x`'s concatenated `axis` (segments of
  `full_sizes`), as static slices + one concatenate.

  Same values as `x[..., segments(sizes, full_sizes)]`, but a gather's backward is a scatter-add
  (measured ~40 ms per VSSD block step on CPU) while a slice's backward is a pad.
  """
  axis = axis % x.ndim
  parts, start = [], 0
  for n, full in zip(sizes, full_sizes):
    if n:
      parts.append(jax.lax.slice_in_dim(x, start, start + n, axis=axis))
    start += full
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def conv_taps(h: int, w: int, k: int = 3, stride: int = 1, count_padding: bool = True) -> int:
  """Kernel taps summed over the output positions of a k x k conv with padding k//2.

  count_padding=True is the usual MACs convention (every output sees k*k taps); False counts
  only taps that land inside the image, which is what XLA's cost analysis reports.
  """
  def axis(n):
    out = -(-n // stride)
    if count_padding:
      return out * k
    return sum(sum(0 <= o * stride - k // 2 + t < n for t in range(k)) for o in range(out))
  return axis(h) * axis(w)
