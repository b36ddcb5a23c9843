"""L-SWAG (Casarin et al., CVPR 2025; research/zc_proxies.md §1): Lambda x Psi. Higher = better.

Lambda (trainability) = sum over weight layers l in the depth band [lo, hi] of
    log( sum_{w in l, sigma_w > 0} 1 / sigma_w ),  sigma_w = sqrt(Var_i |dL_i/dw|).
Psi (expressivity) = number of distinct sample-wise activation patterns over the activation
    layers from the first one up to the band's end `hi` (SWAP truncated at depth L-hat).

Two readings of "Var over i" (`variance=`):
* "per_sample": i indexes the S samples of the batch; g_i = d CE(x_i) / dw computed with one
  forward pass (BatchNorm batch statistics) and S vector-Jacobian products;
* "minibatch": ZiCo-style, i indexes `num_splits` mini-batches, g_i = d meanCE(split_i) / dw.
Depth bands are deciles of the depth of the *active* layers of the arch (`layer_depth_bins`),
both for the weight layers (Lambda) and the activation layers (Psi cut) -- the same relative
depth, since the paper leaves the mapping between the two lists open. Zero-variance weights are
dropped and a layer with no positive-variance weight (an op the arch does not use) is inactive.
The band is chosen once per benchmark by `select_band` (the paper's "spike" rule) from
`layer_terms` of random nets at init; see bench.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evonas_jax.proxies.common import active_units, count_distinct_patterns, layer_depth_bins
from evonas_jax.proxies.registry import register
from evonas_jax.proxies.zico import minibatch_grads

VARIANCES = ("per_sample", "minibatch")
NUM_BINS = 10


def per_sample_abs_moments(model, params, masks, batch):
  """Per-layer (E|g|, E g^2) over per-sample gradients; lists over layers of kernel-shaped arrays."""
  w = model.weights(params)
  x, y = batch["image"], batch["label"]

  def losses(ws):
    logits = model.apply(model.with_weights(params, ws), masks, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)  # (B,)

  out, vjp = jax.vjp(losses, w)
  g = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(out.shape[0], dtype=out.dtype))  # layers of (B, ...)
  return [jnp.mean(jnp.abs(gl), 0) for gl in g], [jnp.mean(gl ** 2, 0) for gl in g]


def minibatch_abs_moments(model, params, masks, batch, num_splits=2):
  g = minibatch_grads(model, params, masks, batch, num_splits)
  return [jnp.mean(jnp.abs(gl), 0) for gl in g], [jnp.mean(gl ** 2, 0) for gl in g]


def layer_terms(model, params, masks, batch, variance="per_sample", num_splits=2):
  """-> (terms (L,), active (L,) bool): log sum 1/sigma per weight layer, forward order."""
  if variance not in VARIANCES:
    raise ValueError(f"lswag variance must be one of {VARIANCES}, got {variance!r}")
  if variance == "per_sample":
    m1, m2 = per_sample_abs_moments(model, params, masks, batch)
  else:
    m1, m2 = minibatch_abs_moments(model, params, masks, batch, num_splits)
  terms, active = [], []
  for a, b in zip(m1, m2):
    var = jnp.maximum(b - a ** 2, 0.0)
    # Relative floor: variances at round-off level of E g^2 are zeros in exact arithmetic.
    ok = var > 1e-12 * jnp.maximum(b, 1e-30)
    s = jnp.sum(jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, var, 1.0)), 0.0))
    on = s > 0
    terms.append(jnp.where(on, jnp.log(jnp.where(on, s, 1.0)), 0.0))
    active.append(on)
  return jnp.stack(terms), jnp.stack(active)


def lswag_parts(model, params, masks, batch, band=(0, NUM_BINS - 1), variance="per_sample",
                num_splits=2):
  """-> (Lambda, Psi) for one arch."""
  lo, hi = band
  if not 0 <= lo <= hi < NUM_BINS:
    raise ValueError(f"lswag band must satisfy 0 <= lo <= hi < {NUM_BINS}, got {band}")
  terms, active = layer_terms(model, params, masks, batch, variance, num_splits)
  bins = layer_depth_bins(active, NUM_BINS)
  lam = jnp.sum(jnp.where((bins >= lo) & (bins <= hi), terms, 0.0))
  _, acts = model.apply_acts(params, masks, batch["image"])
  act_on = jnp.stack([jnp.any(jnp.asarray(w, jnp.float32) > 0) for _, w in acts])
  act_bins = layer_depth_bins(act_on, NUM_BINS)
  upto = ((act_bins >= 0) & (act_bins <= hi)).astype(jnp.float32)
  codes, uw = active_units(acts, upto)
  psi = count_distinct_patterns(codes, uw)
  return lam, psi


@register("lswag")
def lswag(model, params, masks, batch, rng, band=(0, NUM_BINS - 1), variance="per_sample",
          num_splits=2):
  lam, psi = lswag_parts(model, params, masks, batch, band, variance, num_splits)
  return lam * psi


def bin_statistics(terms, active):
  """Per-depth-bin mean and std of the layer terms over many nets.

  terms, active: (N, L) numpy arrays from `layer_terms` vmapped over N nets -> (mean (10,),
  std (10,), count (10,)); bins with no layer get NaN.
  """
  terms, active = np.asarray(terms), np.asarray(active)
  bins = np.asarray(jax.vmap(lambda a: layer_depth_bins(a, NUM_BINS))(jnp.asarray(active)))
  mean, std, cnt = np.full(NUM_BINS, np.nan), np.full(NUM_BINS, np.nan), np.zeros(NUM_BINS, int)
  for b in range(NUM_BINS):
    v = terms[bins == b]
    cnt[b] = v.size
    if v.size:
      mean[b], std[b] = v.mean(), v.std()
  return mean, std, cnt


def select_band(bin_mean, margin: float = 0.5) -> tuple[int, int]:
  """The paper's spike rule, made explicit: the contiguous run of bins around the peak of the
  per-bin mean statistic whose value exceeds median + margin * std (over bins). Needs no labels.
  """
  m = np.asarray(bin_mean, float)
  ok = ~np.isnan(m)
  if not ok.any():
    raise ValueError("select_band: no bin has any layer")
  thr = np.median(m[ok]) + margin * np.std(m[ok])
  peak = int(np.nanargmax(m))
  lo = hi = peak
  while lo - 1 >= 0 and ok[lo - 1] and m[lo - 1] > thr:
    lo -= 1
  while hi + 1 < len(m) and ok[hi + 1] and m[hi + 1] > thr:
    hi += 1
  return lo, hi


def make_lswag(**kwargs):
  """lswag with fixed options (band, variance, num_splits), same proxy signature."""
  return functools.partial(lswag, **kwargs)
