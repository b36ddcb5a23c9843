"""Exact per-subnet BatchNorm statistics (OFA / NASViT recalibration).

A weight-sharing supernet's BatchNorm running statistics are an average over every subnet it
sampled in training, which can be far from any one subnet's. Before a subnet is evaluated, its
statistics are therefore *recomputed*: the running mean and variance are reset and replaced by
the exact mean and (biased) variance of each BatchNorm layer's input over a calibration set,
collected in train-mode forwards (each forward normalises with its own batch statistics, as in
training). With one calibration batch this is that batch's statistics; with several, the pooled
statistics of all their images (Chan et al.'s parallel combination of per-batch moments, exact
in real arithmetic and stable in float32).

Momentum-based recalibration (n train-mode forwards with momentum m) keeps m**n of the shared
statistics: 0.9 of them after one batch. That is what this module replaces.

How the per-batch statistics are read: every BatchNorm in evonas_jax updates its running
statistics as `r <- m * r + (1 - m) * batch` with m = `nn.layers.BN_MOMENTUM` (flax's
convention, `var` biased). Starting a train-mode forward from r = 0 makes the update
(1 - m) * batch, so `batch = update / (1 - m)` to a float rounding. This works for any network
whose BatchNorm statistics live in flax-style `{"mean", "var"}` leaves (the masked supernet, the
sliced subnet, the compiled engine's pieces, the dense heads) without changing the modules.

Functions take `forward(batch_stats, images) -> batch_stats`: ONE train-mode forward of the
subnet on images (B, H, W, C) starting from `batch_stats`, returning the updated tree.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from evonas_jax.nn.layers import BN_MOMENTUM

# The one default calibration set of training evaluation, search fitness and export:
# DEFAULT_CALIB_BATCHES train-split batches of DEFAULT_CALIB_BATCH_SIZE augmented images.
DEFAULT_CALIB_BATCHES = 4
DEFAULT_CALIB_BATCH_SIZE = 128

Forward = Callable[[dict, jax.Array], dict]


def _is_bn(node) -> bool:
  # A BatchNorm's running statistics {"mean", "var"}, or the pooled moments {"mean", "m2"}
  # accumulated for it (same tree positions).
  return isinstance(node, Mapping) and set(node) in ({"mean", "var"}, {"mean", "m2"})


def _map_bn(fn, *trees):
  """Maps fn(*nodes) -> node over the BatchNorm nodes (see `_is_bn`) of trees that share the
  first tree's structure."""
  head = trees[0]
  if _is_bn(head):
    return fn(*trees)
  if not isinstance(head, Mapping):
    raise ValueError(f"batch_stats: expected nested dicts of {{'mean', 'var'}} BatchNorm "
                     f"leaves, found {type(head).__name__}")
  return {k: _map_bn(fn, *(t[k] for t in trees)) for k in head}


def num_layers(batch_stats) -> int:
  """Number of BatchNorm layers in a batch_stats tree."""
  count = [0]

  def one(n):
    count[0] += 1
    return n
  _map_bn(one, batch_stats)
  return count[0]


def zeroed(batch_stats) -> dict:
  """The tree with every running mean and variance set to 0 (same shapes and dtypes)."""
  return _map_bn(lambda n: {k: jnp.zeros_like(v) for k, v in n.items()}, batch_stats)


def batch_moments(updated) -> dict:
  """Per-layer batch mean and biased variance from the update of ONE train-mode forward that
  started at `zeroed` statistics: {"mean": (C,), "var": (C,)} per layer."""
  scale = 1.0 / (1.0 - BN_MOMENTUM)
  return _map_bn(lambda n: {"mean": n["mean"] * scale, "var": n["var"] * scale}, updated)


def combine(acc, n_acc, new, n_new) -> dict:
  """Pooled moments of two disjoint sets: acc/new are {"mean", "m2"} per layer (m2 = the sum
  of squared deviations, per input element of the layer's reduction), n_* their example counts
  (Python numbers or traced scalars; every layer reduces over B*H*W, so counts in images weight
  correctly when all batches share one image size)."""
  n = n_acc + n_new

  def one(a, b):
    delta = b["mean"] - a["mean"]
    return {"mean": a["mean"] + delta * (n_new / n),
            "m2": a["m2"] + b["m2"] + delta * delta * (n_acc * n_new / n)}
  return _map_bn(one, acc, new)


def _moments_of(forward: Forward, zero, images) -> dict:
  b = images.shape[0]
  return _map_bn(lambda n: {"mean": n["mean"], "m2": n["var"] * b},
                 batch_moments(forward(zero, images)))


def _finalize(acc, n, like) -> dict:
  def one(a, ref):
    return {"mean": a["mean"].astype(ref["mean"].dtype),
            "var": jnp.maximum(a["m2"] / n, 0.0).astype(ref["var"].dtype)}
  return _map_bn(one, acc, like)


def exact_batch_stats(forward: Forward, batch_stats, batches: Iterable) -> dict:
  """The subnet's exact BatchNorm statistics over `batches` (a host loop; each forward is
  whatever `forward` compiles to).

  forward: ONE train-mode forward, see the module docstring; batch_stats: the tree to replace
  (its values are ignored: only its structure, shapes and dtypes are used); batches: images
  (B_i, H, W, C), one image size. Returns a tree like batch_stats.
  """
  zero = zeroed(batch_stats)
  acc, n = None, 0
  for images in batches:
    b = int(images.shape[0])
    m = _moments_of(forward, zero, images)
    acc, n = (m, b) if acc is None else (combine(acc, n, m, b), n + b)
  if acc is None:
    raise ValueError("exact_batch_stats: no calibration batches (need at least one)")
  return _finalize(acc, n, batch_stats)


def exact_batch_stats_scan(forward: Forward, batch_stats, calib) -> dict:
  """`exact_batch_stats` as one traced `lax.scan` over calib (n, B, H, W, C): for use inside a
  jit / vmap / shard_map (DMMPE). The compiled program holds one copy of the forward."""
  zero = zeroed(batch_stats)
  b = calib.shape[1]
  first = _moments_of(forward, zero, calib[0])

  def body(carry, images):
    acc, k = carry
    acc = combine(acc, k * b, _moments_of(forward, zero, images), b)
    return (acc, k + 1.0), None

  (acc, k), _ = jax.lax.scan(body, (first, jnp.ones((), jnp.float32)), calib[1:])
  return _finalize(acc, k * b, batch_stats)


def recalibrated(forward: Forward, variables: dict, batches) -> dict:
  """variables with "batch_stats" replaced by the exact statistics over `batches`
  (unchanged if the network has no BatchNorm or no batches are given)."""
  if "batch_stats" not in variables or not jax.tree.leaves(variables["batch_stats"]):
    return variables
  if batches is None or len(batches) == 0:
    return variables
  return {**variables, "batch_stats": exact_batch_stats(forward, variables["batch_stats"],
                                                        batches)}
