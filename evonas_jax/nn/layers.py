"""Small shared layers. Arrays are channels-last: tokens (B, H, W, C).

Elastic widths are handled by *masks*: a masked channel is exactly zero after the layer, so a
supernet at full width computes the same numbers as the sliced network (DESIGN.md invariant 1).
"""
from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Every BatchNorm here (stem, downsample, dense heads, projector): PyTorch's momentum 0.1 in
# flax's convention (running = m * running + (1 - m) * batch). `evonas_jax.evaluate.bn` reads
# batch statistics back from one update, so it relies on this one value.
BN_MOMENTUM = 0.9

# Official `_init_weights`: trunc-normal std 0.02 for linear layers, zero bias.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


class _Dense(nn.Module):
  """Linear layer over the last axis: x (..., Cin) -> (..., features). nn.Dense's parameter
  layout and names (kernel (Cin, features), bias (features,)).

  The input is flattened to (tokens, Cin) first: XLA:CPU differentiates a rank-2 matmul
  2.5x faster than the same contraction on (B, H, W, C) (measured: in_proj of a VSSD block at
  32x16x16x64 -> 642, vjp 37 ms rank-4 vs 14 ms rank-2; the MLP 60 vs 24 ms).
  """
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", dense_init, (x.shape[-1], self.features))
    lead = x.shape[:-1]
    y = x.reshape(-1, x.shape[-1]) @ kernel.astype(x.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y.reshape(*lead, self.features)


def Dense(features: int, *, use_bias: bool = True, name: str | None = None) -> nn.Module:
  return _Dense(features, use_bias=use_bias, name=name)


class SplitDense(nn.Module):
  """A bias-free linear layer whose output is used in segments: x (..., Cin) -> [x @ W[:, seg]]
  for consecutive segments of `sizes`; one kernel (Cin, sum(sizes)) named "kernel" (the layout
  of one Dense(sum(sizes))).

  One matmul per segment writes each segment contiguously. Slicing one wide matmul's output
  instead makes every consumer read with the full width as stride: measured 19 ms of the 48 ms
  forward of a VSSD mixer (32x16x16, d_inner 256) went into the depthwise conv reading its
  slice of the in_proj output.
  """
  sizes: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", dense_init, (x.shape[-1], sum(self.sizes)))
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    out, start = [], 0
    for n in self.sizes:
      out.append((x2 @ kernel[:, start:start + n].astype(x.dtype)).reshape(*lead, n))
      start += n
    return out


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


def _shift_conv(x, kernel, stride: int):
  """sum over the 9 taps of (strided) shifted views of the zero-padded x times kernel[i, j, 0]."""
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = 0.0
  for i in range(3):
    for j in range(3):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out = out + patch * kernel[i, j, 0]
  return out





@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_depthwise(x, kernel, stride):
  return _shift_conv(x, kernel, stride)


def _shift_depthwise_fwd(x, kernel, stride):
  return _shift_conv(x, kernel, stride), (x, kernel)


def _shift_depthwise_bwd(stride, res, g):
  """dx: the cotangent spread back to full resolution (zeros between strided outputs) and
  correlated with the flipped kernel, i.e. one more 9-tap shifted sum; dkernel: 9 reductions of
  tap-shifted x times g. Autodiff of the forward instead sums 9 padded copies of g (9 full-size
  tensors written): measured 37 ms vs ~5 ms for this at 32x16x16x384 on 2 CPU cores."""
  x, kernel = res
  b, h, w, c = x.shape
  ho, wo = g.shape[1], g.shape[2]
  if stride > 1:
    # g lands on rows/cols 0, s, 2s, ... of the stride-1 output grid of size (h, w).
    hi_h, hi_w = h - (ho + (ho - 1) * (stride - 1)), w - (wo + (wo - 1) * (stride - 1))
    g_full = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, hi_h, stride - 1),
                                                     (0, hi_w, stride - 1), (0, 0, 0)))
  else:
    g_full = g
  dx = _shift_conv(g_full, kernel[::-1, ::-1], 1)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  prods = tuple(xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                * g for i in range(3) for j in range(3))
  # One variadic reduce: a single pass over x and g for all 9 taps (nine separate column
  # reductions measured 3.7x slower on XLA:CPU).
  zeros = tuple(jnp.zeros((), g.dtype) for _ in prods)
  taps = jax.lax.reduce(prods, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1, 2))
  dk = jnp.stack(taps).reshape(3, 3, 1, c).astype(kernel.dtype)
  return _like_primal(dx.astype(x.dtype), x), _like_primal(dk, kernel)


def _like_primal(ct, primal):
  """Inside shard_map (check_vma) a cotangent must vary over the same mesh axes as its primal:
  a replicated kernel's gradient computed from a sharded batch is summed over the extra axes
  (the transpose of the implicit broadcast, as autodiff does)."""
  from evonas_jax.parallel import varying_axes
  extra = varying_axes(ct) - varying_axes(primal)
  return jax.lax.psum(ct, tuple(sorted(extra))) if extra else ct


_shift_depthwise.defvjp(_shift_depthwise_fwd, _shift_depthwise_bwd)


def depthwise_conv3x3(x, kernel, stride: int = 1):
  """x (B, H, W, C), kernel (3, 3, 1, C), padding 1 -> (B, ceil(H/s), ceil(W/s), C)."""
  if _DEPTHWISE_IMPL[0] == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  return _shift_depthwise(x, kernel, stride)


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


def take_segments(x, sizes, full_sizes, axis: int = -1):
  """The leading `sizes[i]` entries of each segment of `x`'s concatenated `axis` (segments of
  `full_sizes`), as static slices + one concatenate.

  The OFA/AutoFormer segment-wise slicing. Static slices, not a gather: a gather's backward is a
  scatter-add (measured ~40 ms per VSSD block step on CPU) while a slice's backward is a pad.
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
