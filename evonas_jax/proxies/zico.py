"""ZiCo (Li et al., ICLR 2023): sum over layers of log(sum_w mean_k|g_w| / std_k(g_w)).

Statistics over K mini-batches (ZiCo's code: K = 2 splits of the batch, one gradient each, std of
the signed gradient, population std). Zero-std weights are dropped; a layer whose sum is 0 (e.g. an
op inactive in the arch: all its gradients are exactly 0) is skipped. Higher = better.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from evonas_jax.proxies.common import weight_grads
from evonas_jax.proxies.registry import register


def minibatch_grads(model, params, masks, batch, num_splits: int):
  """Per-split kernel gradients: list over layers of (K, *kernel_shape)."""
  b = batch["image"].shape[0]
  if b % num_splits:
    raise ValueError(f"batch size {b} must be divisible by num_splits={num_splits}")
  split = jax.tree.map(lambda a: a.reshape((num_splits, b // num_splits) + a.shape[1:]), batch)
  return jax.vmap(lambda sb: weight_grads(model, params, masks, sb)[1])(split)


def zico_from_grads(grads):
  """grads: list over layers of (K, ...) -> ZiCo score."""
  total = 0.0
  for g in grads:
    std = jnp.std(g, axis=0)
    mean_abs = jnp.mean(jnp.abs(g), axis=0)
    ok = std > 0
    s = jnp.sum(jnp.where(ok, mean_abs / jnp.where(ok, std, 1.0), 0.0))
    total = total + jnp.where(s > 0, jnp.log(jnp.where(s > 0, s, 1.0)), 0.0)
  return total


@register("zico")
def zico(model, params, masks, batch, rng, num_splits: int = 2):
  return zico_from_grads(minibatch_grads(model, params, masks, batch, num_splits))
