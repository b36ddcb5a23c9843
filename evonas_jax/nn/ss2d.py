"""SS2D mixer: VMamba's four-direction cross-scan with a selective scan per direction.

x -> in_proj -> (x, z); x -> dwconv3x3 -> SiLU -> cross_scan (4 orders) -> per-direction x_proj
(dt_rank + 2N) and dt_proj -> selective_scan (delta softplus, A = -exp(A_log), D skip) ->
cross_merge -> LayerNorm -> * SiLU(z) -> out_proj. Elastic: d_inner (masked leading channels)
and d_state (masked leading states; x_proj rows sliced segment-wise as [dt | B | C]).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.kernels import cross_merge, cross_scan, selective_scan
from evonas_jax.nn.layers import Dense, DWConv, LayerNorm, inv_softplus_dt_init, take_segments

K = 4  # scan directions


def dt_rank(dim: int) -> int:
  return math.ceil(dim / 16)


class SS2DMixer(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C); mask as for VSSDMixer. `heads` is unused (kept so every
  mixer shares one constructor signature)."""
  heads: int
  d_inner: int
  d_state: int
  scan_backend: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None):
    b, hgt, wid, c = x.shape
    d, n, r = self.d_inner, self.d_state, dt_rank(c)
    xi, z = jnp.split(Dense(2 * d, use_bias=False, name="in_proj")(x), 2, axis=-1)
    xi = nn.silu(DWConv(d, name="conv")(xi))
    if mask is not None:
      xi = xi * mask["inner"]
    xs = cross_scan(xi.transpose(0, 3, 1, 2))                                     # (B, K, d, L)
    # PyTorch nn.Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as VMamba uses.
    lin = lambda fan_in: (lambda k, s: jax.random.uniform(k, s, minval=-fan_in ** -0.5,
                                                          maxval=fan_in ** -0.5))
    x_proj = self.param("x_proj", lin(d), (K, r + 2 * n, d))
    dt_w = self.param("dt_proj_w", lin(r), (K, d, r))
    dt_b = self.param("dt_proj_b", inv_softplus_dt_init, (K, d))
    a_log = self.param("A_log", lambda k, s: jnp.broadcast_to(
        jnp.log(jnp.arange(1, s[-1] + 1, dtype=jnp.float32)), s), (K, d, n))
    d_skip = self.param("D", nn.initializers.ones, (K, d))

    x_dbl = jnp.einsum("bkdl,kcd->bkcl", xs, x_proj)
    dts, bs, cs = jnp.split(x_dbl, [r, r + n], axis=2)
    if mask is not None:
      st = mask["state"][:, None]
      bs, cs = bs * st, cs * st
    dts = jnp.einsum("bkrl,kdr->bkdl", dts, dt_w)
    L = hgt * wid
    y = selective_scan(xs.reshape(b, K * d, L), dts.reshape(b, K * d, L),
                       -jnp.exp(a_log).reshape(K * d, n), bs, cs, d_skip.reshape(K * d),
                       delta_bias=dt_b.reshape(K * d), delta_softplus=True,
                       backend=self.scan_backend)                                 # (B, K*d, L)
    y = cross_merge(y.reshape(b, K, d, hgt, wid)).transpose(0, 2, 1).reshape(b, hgt, wid, d)
    y = LayerNorm(name="norm")(y, None if mask is None else mask["inner"]) * nn.silu(z)
    return Dense(c, use_bias=False, name="out_proj")(y)

  @staticmethod
  def slice_params(p, full, sub):
    D, N = full.d_inner, full.d_state
    ds, ns = sub.d_inner, sub.d_state
    r = p["x_proj"].shape[1] - 2 * N
    return {
        "in_proj": {"kernel": take_segments(p["in_proj"]["kernel"], (ds, ds), (D, D))},
        "conv": {"kernel": p["conv"]["kernel"][..., :ds], "bias": p["conv"]["bias"][:ds]},
        "x_proj": take_segments(p["x_proj"], (r, ns, ns), (r, N, N), axis=1)[..., :ds],
        "dt_proj_w": p["dt_proj_w"][:, :ds], "dt_proj_b": p["dt_proj_b"][:, :ds],
        "A_log": p["A_log"][:, :ds, :ns], "D": p["D"][:, :ds],
        "norm": {"scale": p["norm"]["scale"][:ds], "bias": p["norm"]["bias"][:ds]},
        "out_proj": {"kernel": p["out_proj"]["kernel"][:ds]},
    }

  @staticmethod
  def macs(h: int, w: int, wd, taps3: int) -> dict[str, int]:
    L, c, d, n = h * w, wd.dim, wd.d_inner, wd.d_state
    r = dt_rank(c)
    matmul = L * c * 2 * d + taps3 * d + K * L * d * (r + 2 * n) + K * L * r * d + L * d * c
    # Scan: state update (one MAC per state element) + readout C.h (one MAC per state element).
    return {"matmul": matmul, "scan": 2 * K * L * d * n}

  @staticmethod
  def params(wd) -> int:
    c, d, n = wd.dim, wd.d_inner, wd.d_state
    r = dt_rank(c)
    return c * 2 * d + 10 * d + K * (r + 2 * n) * d + K * d * r + 2 * K * d + K * d * n + 2 * d + d * c
