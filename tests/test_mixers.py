"""Mixers against independent naive references written from the paper/official description."""
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
