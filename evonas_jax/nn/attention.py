"""Global multi-head self-attention mixer (the ViT stage, research §2.4)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.layers import Dense


class Attention(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C). qkv without bias, output projection with bias, softmax over
  all H*W tokens, scale head_dim^-0.5. Not elastic: `d_inner`/`d_state` and mask are ignored."""
  heads: int
  d_inner: int = 0
  d_state: int = 0

  @nn.compact
  def __call__(self, x, mask=None):
    b, h, w, c = x.shape
    hd = c // self.heads
    qkv = Dense(3 * c, use_bias=False, name="qkv")(x).reshape(b, h * w, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                       # (B, L, nh, hd)
    logits = jnp.einsum("blhd,bmhd->bhlm", q, k) * hd ** -0.5
    y = jnp.einsum("bhlm,bmhd->blhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, h, w, c)
    return Dense(c, name="proj")(y)

  @staticmethod
  def slice_params(p, full, sub):
    return p

  @staticmethod
  def macs(h: int, w: int, wd, taps3: int) -> dict[str, int]:
    L, c = h * w, wd.dim
    return {"matmul": L * c * 3 * c + 2 * L * L * c + L * c * c, "scan": 0}

  @staticmethod
  def params(wd) -> int:
    return 4 * wd.dim * wd.dim + wd.dim
