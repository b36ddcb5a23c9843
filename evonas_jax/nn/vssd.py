"""VSSD mixer: Mamba2-style non-causal SSD (research/evonas.md §2.3), the official VSS mixer.

y_i,c = C_i . sum_j B_j w_j,h(c) x_j,c + D_h(c) x_i,c    with w_j,h = dt_j,h * exp(A_log_h)

The sum runs over all L = H*W tokens (no causal mask, no normalisation, no scan): two matmuls.
Heads only differ by their scalar (dt, A, D), so the per-head form is written per channel with
a channel -> head index. That index follows the official quirk: a subnet reshapes its first
d_inner_s channels into `heads` heads of size d_inner_s / heads, so channel c belongs to head
c // (d_inner_s / heads) (research §2.6) -- required to reuse the official checkpoints.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.layers import (Dense, DWConv, LayerNorm, SplitDense, inv_softplus_dt_init,
                                  take_segments)


class VSSDMixer(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C).

  Attributes: heads (fixed), d_inner (allocated expand*C), d_state (allocated N).
  mask: None (standalone) or {"inner": (d_inner,), "state": (d_state,)} 0/1 leading masks.
  """
  heads: int
  d_inner: int
  d_state: int

  @nn.compact
  def __call__(self, x, mask=None):
    b, hgt, wid, c = x.shape
    d, n, nh = self.d_inner, self.d_state, self.heads
    z, xbc, dt = SplitDense((d, d + 2 * n, nh), name="in_proj")(x)
    xbc = nn.silu(DWConv(d + 2 * n, name="conv")(xbc))
    xv, bm, cm = jnp.split(xbc, [d, d + n], axis=-1)
    inner = None
    if mask is not None:
      inner = mask["inner"]
      xv, bm, cm = xv * inner, bm * mask["state"], cm * mask["state"]
    dt_bias = self.param("dt_bias", inv_softplus_dt_init, (nh,))
    a_log = self.param("A_log", lambda k, s: jnp.log(jax.random.uniform(k, s, minval=1., maxval=16.)),
                       (nh,))
    d_skip = self.param("D", nn.initializers.ones, (nh,))

    w = jax.nn.softplus(dt + dt_bias) * jnp.exp(a_log)                 # (B, H, W, nh)
    tok = lambda t: t.reshape(b, hgt * wid, t.shape[-1])
    if inner is None:
      # Standalone (sliced) widths: channel c belongs to head c // (d / nh), i.e. contiguous
      # groups, so a reshape to (nh, d / nh) replaces the per-channel head gather (whose
      # scatter backward cost ~10x a broadcast here).
      hd = d // nh
      xh = tok(xv).reshape(b, hgt * wid, nh, hd)                        # (B, L, nh, hd)
      kv = jnp.einsum("bln,blhp->bnhp", tok(bm), xh * tok(w)[..., None])
      y = jnp.einsum("bln,bnhp->blhp", tok(cm), kv).reshape(b, hgt, wid, d)
      # D per channel as a (d,) vector: a last-axis broadcast, which XLA does not materialise
      # (a (nh, 1) broadcast over (B, L, nh, hd) was written out in full: ~5 ms per block).
      y = y + xv * jnp.repeat(d_skip, hd)
    else:
      d_active = inner.sum().astype(jnp.int32)
      head_idx = jnp.minimum(jnp.arange(d) // (d_active // nh), nh - 1)  # (d,) channel -> head
      w_c = jnp.take(w, head_idx, axis=-1)                                # (B, H, W, d)
      kv = jnp.einsum("bln,bld->bnd", tok(bm), tok(w_c * xv))             # (B, N, d)
      y = jnp.einsum("bln,bnd->bld", tok(cm), kv).reshape(b, hgt, wid, d)
      y = y + d_skip[head_idx] * xv
    y = LayerNorm(name="norm")(y, inner) * z    # official: LayerNorm then raw z (no SiLU)
    return Dense(c, use_bias=False, name="out_proj")(y)

  @staticmethod
  def slice_params(p, full, sub):
    """Supernet params -> params of a VSSDMixer(sub.d_inner, sub.d_state). full/sub: Widths."""
    D, N, nh = full.d_inner, full.d_state, full.heads
    ds, ns = sub.d_inner, sub.d_state
    conv = ((ds, ns, ns), (D, N, N))
    return {
        "in_proj": {"kernel": take_segments(p["in_proj"]["kernel"], (ds, ds, ns, ns, nh),
                                            (D, D, N, N, nh))},
        "conv": {"kernel": take_segments(p["conv"]["kernel"], *conv),
                 "bias": take_segments(p["conv"]["bias"], *conv)},
        "dt_bias": p["dt_bias"], "A_log": p["A_log"], "D": p["D"],
        "norm": {"scale": p["norm"]["scale"][:ds], "bias": p["norm"]["bias"][:ds]},
        "out_proj": {"kernel": p["out_proj"]["kernel"][:ds]},
    }

  @staticmethod
  def macs(h: int, w: int, wd, taps3: int) -> dict[str, int]:
    """Multiply-accumulates per image at an (h, w) token grid; wd: Widths; taps3: 3x3 conv taps
    summed over positions (see layers.conv_taps)."""
    L, c, d, n = h * w, wd.dim, wd.d_inner, wd.d_state
    return {"matmul": L * c * (2 * d + 2 * n + wd.heads) + taps3 * (d + 2 * n)
                      + 2 * L * n * d + L * d * c, "scan": 0}

  @staticmethod
  def params(wd) -> int:
    c, d, n, nh = wd.dim, wd.d_inner, wd.d_state, wd.heads
    return c * (2 * d + 2 * n + nh) + 10 * (d + 2 * n) + 3 * nh + 2 * d + d * c
