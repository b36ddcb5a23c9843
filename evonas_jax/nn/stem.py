"""Stem (stride 4) and PatchMerging (stride 2, C -> 2C), as in the official VSSD code (§2.1-2.2).

Neither is elastic; both use BatchNorm whose running statistics are shared by every subnet.
"""
from __future__ import annotations

import flax.linen as nn

from evonas_jax.nn.layers import BN_MOMENTUM, DWConv, conv_taps


class Conv1x1(nn.Module):
  """1x1 convolution as a rank-2 matmul over (tokens, Cin), with nn.Conv's parameter layout
  (kernel (1, 1, Cin, features), bias (features,)) and initialisers.

  XLA:CPU runs a 1x1 `conv_general_dilated` through its convolution path: measured 23.6 ms
  (forward + backward, 32x16x16x64 -> 512) against 6.7 ms for the same matmul.
  """
  features: int
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, cin, self.features))
    y = x.reshape(-1, cin) @ kernel.reshape(cin, self.features).astype(x.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y.reshape(*x.shape[:-1], self.features)


def _conv(features, k, stride=1, use_bias=False, name=None):
  if k == 1 and stride == 1:
    return Conv1x1(features, use_bias=use_bias, name=name)
  pad = ((k // 2, k // 2),) * 2   # PyTorch padding k//2: output ceil(H / stride)
  return nn.Conv(features, (k, k), strides=(stride, stride), padding=pad, use_bias=use_bias,
                 name=name)


def _bn(train, name, axis_name=None):
  # axis_name: the mesh axis over which batch statistics are averaged (SyncBN) when the step runs
  # inside shard_map; with it an N-device step equals the 1-device step on the global batch.
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5,
                      name=name,
                      axis_name=axis_name if train else None)


class Stem(nn.Module):
  """image (B, H, W, Cin) -> tokens (B, ceil(H/4), ceil(W/4), dim)."""
  dim: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    half, ax = self.dim // 2, self.bn_axis_name
    x = nn.relu(_bn(train, "bn1", ax)(_conv(half, 3, 2, name="conv1")(x)))
    r = nn.relu(_bn(train, "bn_r1", ax)(_conv(half, 3, name="conv_r1")(x)))
    x = x + _bn(train, "bn_r2", ax)(_conv(half, 3, name="conv_r2")(r))
    x = nn.relu(_bn(train, "bn3", ax)(_conv(4 * self.dim, 3, 2, name="conv3")(x)))
    return _bn(train, "bn4", ax)(_conv(self.dim, 1, name="conv4")(x))

  @staticmethod
  def macs(h: int, w: int, cin: int, dim: int, count_padding: bool = True) -> int:
    half = dim // 2
    h1, w1 = -(-h // 2), -(-w // 2)
    h2, w2 = -(-h1 // 2), -(-w1 // 2)
    t = lambda hh, ww, s: conv_taps(hh, ww, 3, s, count_padding)
    return (t(h, w, 2) * cin * half + 2 * t(h1, w1, 1) * half * half
            + t(h1, w1, 2) * half * 4 * dim + h2 * w2 * 4 * dim * dim)


class PatchMerging(nn.Module):
  """Inverted bottleneck downsample: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim).

  Every conv has a bias, as the official ConvLayer's default: the last one's bias sits before a
  BatchNorm, so it is inert in train mode but shifts the running mean; it is kept so that
  parameter counts and checkpoints match the official supernet one to one.
  """
  out_dim: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    x = nn.relu(_conv(8 * c, 1, use_bias=True, name="expand")(x))
    x = nn.relu(DWConv(8 * c, stride=2, name="dw")(x))
    x = _conv(self.out_dim, 1, use_bias=True, name="project")(x)
    return _bn(train, "bn", self.bn_axis_name)(x)

  @staticmethod
  def macs(h: int, w: int, c: int, out_dim: int, count_padding: bool = True) -> int:
    h2, w2 = -(-h // 2), -(-w // 2)
    return (h * w * c * 8 * c + conv_taps(h, w, 3, 2, count_padding) * 8 * c
            + h2 * w2 * 8 * c * out_dim)
