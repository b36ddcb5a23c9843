"""Mixers and the MLP against independent naive references written from the paper/official
description."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.nn.attention import Attention
from evonas_jax.nn.vssd import VSSDMixer


def _naive_vssd(p, x, heads, d, n):
  """Per-head loops in numpy, exactly as research/evonas.md §2.3 describes the official code."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b, hh, ww, c = x.shape
  x = np.asarray(x, np.float64)
  zxbcdt = x @ p["in_proj"]["kernel"]
  z, xbc, dt = zxbcdt[..., :d], zxbcdt[..., d:2 * d + 2 * n], zxbcdt[..., 2 * d + 2 * n:]
  k, bias = p["conv"]["kernel"], p["conv"]["bias"]
  xp = np.pad(xbc, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros_like(xbc)
  for i in range(hh):
    for j in range(ww):
      conv[:, i, j] = (xp[:, i:i + 3, j:j + 3] * k[:, :, 0][None]).sum((1, 2)) + bias
  xbc = conv / (1 + np.exp(-conv))
  xv, bm, cm = xbc[..., :d], xbc[..., d:d + n], xbc[..., d + n:]
  dt = np.log1p(np.exp(dt + p["dt_bias"]))
  hd = d // heads
  L = hh * ww
  y = np.zeros((b, L, d))
  for bi in range(b):
    V = xv[bi].reshape(L, heads, hd)
    Bm, Cm = bm[bi].reshape(L, n), cm[bi].reshape(L, n)
    for h in range(heads):
      w = dt[bi].reshape(L, heads)[:, h] * np.exp(p["A_log"][h])        # (L,)
      kv = Bm.T @ (w[:, None] * V[:, h])                                 # (N, hd)
      y[bi, :, h * hd:(h + 1) * hd] = Cm @ kv + p["D"][h] * V[:, h]
  y = y.reshape(b, hh, ww, d)
  mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
  y = (y - mu) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
  return (y * z) @ p["out_proj"]["kernel"]


def test_vssd_matches_naive_per_head_reference():
  heads, d, n = 4, 24, 8
  m = VSSDMixer(heads, d, n)
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 16))
  p = m.init(jax.random.key(1), x)["params"]
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), p)
  np.testing.assert_allclose(m.apply({"params": p}, x), _naive_vssd(p, x, heads, d, n),
                             atol=2e-5, rtol=1e-4)


def test_vssd_subnet_uses_official_head_layout():
  """A subnet with d_inner_s = d/2 groups its first d/2 channels into `heads` heads of size
  d/(2*heads), each using that head's dt/A/D (the official quirk): masked full-width == naive
  reference of the sliced mixer."""
  heads, d, n = 4, 32, 8
  full = VSSDMixer(heads, d, n)
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
  p = full.init(jax.random.key(1), x)["params"]
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), p)
  from evonas_jax.nn.block import Widths
  sub = Widths(8, heads, 16, 4)
  ps = VSSDMixer.slice_params(p, Widths(8, heads, d, n), sub)
  mask = {"inner": (jnp.arange(d) < 16).astype(jnp.float32),
          "state": (jnp.arange(n) < 4).astype(jnp.float32)}
  np.testing.assert_allclose(full.apply({"params": p}, x, mask), _naive_vssd(ps, x, heads, 16, 4),
                             atol=2e-5, rtol=1e-4)


def test_attention_matches_naive():
  m = Attention(heads=2)
  x = jax.random.normal(jax.random.key(0), (1, 2, 3, 8))
  p = m.init(jax.random.key(1), x)["params"]
  xs = np.asarray(x, np.float64).reshape(1, 6, 8)
  qkv = xs @ np.asarray(p["qkv"]["kernel"], np.float64)
  out = np.zeros((1, 6, 8))
  for h in range(2):
    q, k, v = (qkv[0, :, i * 8 + h * 4: i * 8 + h * 4 + 4] for i in range(3))
    s = q @ k.T / 2.0
    a = np.exp(s - s.max(1, keepdims=True)); a /= a.sum(1, keepdims=True)
    out[0, :, h * 4:(h + 1) * 4] = a @ v
  ref = out @ np.asarray(p["proj"]["kernel"]) + np.asarray(p["proj"]["bias"])
  np.testing.assert_allclose(m.apply({"params": p}, x).reshape(1, 6, 8), ref, atol=1e-5)


# ---- SS2D (VMamba) -----------------------------------------------------------------------------

def _np_dwconv_silu(x, k, bias):
  """Zero-padded 3x3 depthwise conv + bias, then SiLU; x (B, H, W, d), k (3, 3, 1, d)."""
  b, hh, ww, d = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros_like(x)
  for i in range(hh):
    for j in range(ww):
      conv[:, i, j] = (xp[:, i:i + 3, j:j + 3] * k[:, :, 0][None]).sum((1, 2)) + bias
  return conv / (1 + np.exp(-conv))


def _scan_orders(hh, ww):
  """VMamba's four 1-D orders of the (h, w) grid, as explicit lists of positions: row-major,
  column-major, and both reversed."""
  rows = [(i, j) for i in range(hh) for j in range(ww)]
  cols = [(i, j) for j in range(ww) for i in range(hh)]
  return [rows, cols, rows[::-1], cols[::-1]]


def _naive_ss2d(p, x, d, n):
  """SS2D written out from VMamba's description (module docstring), float64, python loops over
  the 4 directions and over time. p: params of an SS2DMixer with exactly d_inner d, d_state n.
  x (B, H, W, C) -> (B, H, W, C)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  b, hh, ww, c = x.shape
  r = -(-c // 16)                                                     # dt_rank = ceil(C / 16)
  xz = x @ p["in_proj"]["kernel"]                                     # (B, H, W, 2d)
  xi, z = xz[..., :d], xz[..., d:]
  xi = _np_dwconv_silu(xi, p["conv"]["kernel"], p["conv"]["bias"])
  merged = np.zeros((b, hh, ww, d))
  for k, order in enumerate(_scan_orders(hh, ww)):
    a = -np.exp(p["A_log"][k])                                        # (d, n)
    for bi in range(b):
      state = np.zeros((d, n))
      for (i, j) in order:
        u = xi[bi, i, j]                                              # (d,)
        dbl = p["x_proj"][k] @ u                                      # (r + 2n,): [dt | B | C]
        dt_in, bt, ct = dbl[:r], dbl[r:r + n], dbl[r + n:]
        delta = np.log1p(np.exp(p["dt_proj_w"][k] @ dt_in + p["dt_proj_b"][k]))   # softplus
        state = np.exp(delta[:, None] * a) * state + (delta * u)[:, None] * bt[None, :]
        # cross-merge: each direction's output goes back to the position it was read from
        merged[bi, i, j] += state @ ct + p["D"][k] * u
  mu, var = merged.mean(-1, keepdims=True), merged.var(-1, keepdims=True)
  y = (merged - mu) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
  return (y * (z / (1 + np.exp(-z)))) @ p["out_proj"]["kernel"]


def _hand_slice_ss2d(p, big_d, big_n, d, n):
  """SS2D params of the leading d of big_d channels and n of big_n states, by explicit index
  arithmetic: in_proj columns [x | z] each cut to d, x_proj rows [dt (r) | B | C] with B and C
  each cut to n."""
  r = p["x_proj"].shape[1] - 2 * big_n
  rows = np.r_[0:r, r:r + n, r + big_n:r + big_n + n]
  return {"in_proj": {"kernel": p["in_proj"]["kernel"][:, np.r_[0:d, big_d:big_d + d]]},
          "conv": {"kernel": p["conv"]["kernel"][..., :d], "bias": p["conv"]["bias"][:d]},
          "x_proj": p["x_proj"][:, rows, :d], "dt_proj_w": p["dt_proj_w"][:, :d],
          "dt_proj_b": p["dt_proj_b"][:, :d], "A_log": p["A_log"][:, :d, :n], "D": p["D"][:, :d],
          "norm": {"scale": p["norm"]["scale"][:d], "bias": p["norm"]["bias"][:d]},
          "out_proj": {"kernel": p["out_proj"]["kernel"][:d]}}


def _ss2d_setup(d, n, c=20, shape=(2, 3, 4)):
  """C = 20 -> dt_rank 2 (a multi-row dt segment); a non-square 3 x 4 map tells the row- and
  column-major orders apart."""
  from evonas_jax.nn.ss2d import SS2DMixer
  m = SS2DMixer(heads=1, d_inner=d, d_state=n)
  x = jax.random.normal(jax.random.key(0), (*shape, c))
  p = m.init(jax.random.key(1), x)["params"]
  # Init weights are small and structured (A_log = log 1..n, D = 1): perturb so that a wrong
  # direction, state or segment shows.
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  return m, p, x


def test_ss2d_matches_naive_cross_scan_loop_reference():
  d, n = 24, 6
  m, p, x = _ss2d_setup(d, n)
  np.testing.assert_allclose(m.apply({"params": p}, x), _naive_ss2d(p, x, d, n),
                             atol=2e-5, rtol=1e-4)


def test_ss2d_masked_matches_naive_reference_of_the_hand_sliced_mixer():
  """Masked mode (leading 16 of 24 channels, 4 of 6 states) == the naive reference run on
  params sliced by hand (not by SS2DMixer.slice_params)."""
  d, n, ds, ns = 24, 6, 16, 4
  m, p, x = _ss2d_setup(d, n)
  mask = {"inner": (jnp.arange(d) < ds).astype(jnp.float32),
          "state": (jnp.arange(n) < ns).astype(jnp.float32)}
  ps = _hand_slice_ss2d(jax.tree.map(np.asarray, p), d, n, ds, ns)
  np.testing.assert_allclose(m.apply({"params": p}, x, mask), _naive_ss2d(ps, x, ds, ns),
                             atol=2e-5, rtol=1e-4)


# ---- MLP -------------------------------------------------------------------------------------

def _naive_mlp(p, x, active=None):
  """fc1 -> exact-erf GELU -> fc2 in float64, per output element; `active`: indices of the
  hidden channels that exist (None = all)."""
  erf = np.vectorize(math.erf)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  w1, b1, w2, b2 = p["fc1"]["kernel"], p["fc1"]["bias"], p["fc2"]["kernel"], p["fc2"]["bias"]
  idx = np.arange(w1.shape[1]) if active is None else np.asarray(active)
  h = x @ w1[:, idx] + b1[idx]
  g = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
  return g @ w2[idx] + b2


def _mlp_setup(hidden=12, c=8):
  from evonas_jax.nn.mlp import Mlp
  m = Mlp(hidden)
  x = 2.0 * jax.random.normal(jax.random.key(3), (2, 3, 5, c))   # wide enough to bend GELU
  p = m.init(jax.random.key(4), x)["params"]
  # Biases start at 0 and weights at std 0.02; larger random values make GELU's curvature and
  # a leaking masked channel (GELU(bias) != 0) visible.
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.5 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  return m, p, x


def test_mlp_matches_naive_exact_gelu_reference():
  m, p, x = _mlp_setup()
  np.testing.assert_allclose(m.apply({"params": p}, x), _naive_mlp(p, x), atol=1e-5, rtol=1e-5)


def test_mlp_hidden_mask_matches_naive_reference_of_the_active_channels():
  """Masked mode: leading 5 of 12 hidden channels (the elastic width), and an arbitrary 0/1
  mask; the reference only has the active channels."""
  m, p, x = _mlp_setup()
  for active in (np.arange(5), np.array([0, 3, 4, 9, 11])):
    mask = jnp.zeros(12).at[active].set(1.0)
    np.testing.assert_allclose(m.apply({"params": p}, x, mask), _naive_mlp(p, x, active),
                               atol=1e-5, rtol=1e-5)
