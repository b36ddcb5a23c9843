"""Shared pieces of the proxies: loss, gradients w.r.t. the weight layers, activation codes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def ce_loss(logits, labels):
  """Mean cross-entropy. logits (B, K), labels (B,) int."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def weight_loss_fn(model, params, masks, batch, bn=True):
  """-> f(weights list) = mean CE with the conv/linear kernels replaced by `weights`."""
  def f(weights):
    p = model.with_weights(params, weights)
    return ce_loss(model.apply(p, masks, batch["image"], bn=bn), batch["label"])
  return f


def weight_grads(model, params, masks, batch, bn=True):
  """(weights, grads): lists of conv/linear kernels and d mean-CE / d kernel, forward order."""
  w = model.weights(params)
  g = jax.grad(weight_loss_fn(model, params, masks, batch, bn))(w)
  return w, g


def active_units(acts, upto=None):
  """Flatten activation layers to binary codes.

  acts: [(pre (B, ...), w)], w a scalar or per-unit mask -> (codes (B, U) bool = pre > 0, unit weight (U,) float in {0, 1}).
  `upto` (optional (L,) float) multiplies each layer's weight (used to cut at a depth band).
  """
  codes, ws = [], []
  for i, (pre, w) in enumerate(acts):
    b = pre.shape[0]
    c = pre.reshape(b, -1) > 0
    wl = jnp.asarray(w, jnp.float32) if upto is None else jnp.asarray(w, jnp.float32) * upto[i]
    codes.append(c)
    # w is a scalar (whole layer on/off) or broadcastable to one sample's units (width masks).
    ws.append(jnp.broadcast_to(wl, pre.shape[1:]).reshape(-1))
  return jnp.concatenate(codes, axis=1), jnp.concatenate(ws)


def count_distinct_patterns(codes, weight):
  """Number of distinct columns of `codes` (B <= 64, U) among units with weight > 0. Pure jnp.

  Each unit's B-bit pattern is packed into two uint32 words and sorted; inactive units are sorted
  last (primary key) and ignored.
  """
  b, u = codes.shape
  if b > 64:
    raise ValueError(f"pattern count supports batch <= 64, got {b}")
  bits = jnp.zeros((64, u), bool).at[:b].set(codes)
  shifts = jnp.arange(32, dtype=jnp.uint32)[:, None]
  lo = jnp.sum(bits[:32].astype(jnp.uint32) << shifts, axis=0, dtype=jnp.uint32)
  hi = jnp.sum(bits[32:].astype(jnp.uint32) << shifts, axis=0, dtype=jnp.uint32)
  inactive = (weight <= 0).astype(jnp.uint32)
  order = jnp.lexsort((lo, hi, inactive))
  lo, hi, act = lo[order], hi[order], inactive[order] == 0
  new = jnp.concatenate([jnp.ones((1,), bool), (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
  return jnp.sum(new & act).astype(jnp.float32)


def layer_depth_bins(active, num_bins: int = 10):
  """Depth-percentile bin of each layer among the *active* layers of the arch.

  active: (L,) bool in forward order. Layer with 0-based rank r among the D active layers gets bin
  int((r / D) * 100 // (100 / num_bins)) in 0..num_bins-1 (L-SWAG Eq. 6 with a 0-based l, so the
  last layer does not fall into an extra bin). Inactive layers get -1.
  """
  active = jnp.asarray(active)
  d = jnp.maximum(active.sum(), 1)
  rank = jnp.cumsum(active) - 1
  pct = rank.astype(jnp.float32) / d * 100.0
  b = jnp.floor(pct / (100.0 / num_bins)).astype(jnp.int32)
  return jnp.where(active, jnp.clip(b, 0, num_bins - 1), -1)
