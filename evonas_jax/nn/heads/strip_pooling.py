"""StripPooling (SPNet, Hou et al. 2020), the official depth/FPN neck on the stride-32 feature
(research/evonas.md §2.7), written from the paper's description.

Two branches on C/4 channels:
* "local": 3x3 conv, plus square adaptive-average pools (default 20 and 12) -> 3x3 conv ->
  bilinear back (align_corners=True, as SPNet), summed, ReLU, 3x3 conv.
* "strip": a 1 x W strip pool (pool over H) -> 1x3 conv and an H x 1 strip pool -> 3x1 conv,
  each expanded back, summed, ReLU, 3x3 conv.
The two are concatenated, projected back to C by a 1x1 conv + BN, added to the input, ReLU.
Every conv is followed by BatchNorm (no conv bias).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from evonas_jax.nn.heads.ops import ConvBN, adaptive_avg_pool, resize_bilinear


class StripPooling(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C). pool_sizes: the two square adaptive-pool sizes."""
  pool_sizes: tuple[int, int] = (20, 12)
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h, w, c = x.shape[1:]
    inner = max(c // 4, 1)
    ax = self.bn_axis_name
    cbr = lambda f, k, relu, name: ConvBN(f, k, relu, ax, name=name)
    up = lambda t: resize_bilinear(t, (h, w), align_corners=True)
    x1 = cbr(inner, (1, 1), True, "conv1_1")(x, train)
    x2 = cbr(inner, (1, 1), True, "conv1_2")(x, train)
    p0 = cbr(inner, (3, 3), False, "conv2_0")(x1, train)
    p1 = up(cbr(inner, (3, 3), False, "conv2_1")(adaptive_avg_pool(x1, (self.pool_sizes[0],) * 2),
                                                  train))
    p2 = up(cbr(inner, (3, 3), False, "conv2_2")(adaptive_avg_pool(x1, (self.pool_sizes[1],) * 2),
                                                  train))
    # (1, W) strip: average over H, then a 1x3 conv along W; (H, 1) strip: over W, 3x1 conv.
    s_w = cbr(inner, (1, 3), False, "conv2_3")(adaptive_avg_pool(x2, (1, None)), train)
    s_h = cbr(inner, (3, 1), False, "conv2_4")(adaptive_avg_pool(x2, (None, 1)), train)
    s_w, s_h = jnp.broadcast_to(s_w, x2.shape), jnp.broadcast_to(s_h, x2.shape)
    y1 = cbr(inner, (3, 3), True, "conv2_5")(nn.relu(p0 + p1 + p2), train)
    y2 = cbr(inner, (3, 3), True, "conv2_6")(nn.relu(s_w + s_h), train)
    out = cbr(c, (1, 1), False, "conv3")(jnp.concatenate([y1, y2], -1), train)
    return nn.relu(x + out)


class StripPoolingNeck(nn.Module):
  """`num` StripPooling modules in series (official: 2). (B, H, W, C) -> (B, H, W, C)."""
  num: int = 2
  pool_sizes: tuple[int, int] = (20, 12)
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.num):
      x = StripPooling(tuple(self.pool_sizes), self.bn_axis_name, name=f"sp{i}")(x, train)
    return x
