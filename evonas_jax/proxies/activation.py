"""Activation-pattern proxies: NWOT (NASWOT) and SWAP. Higher = better.

Units are every scalar of every ReLU's input tensor (pre-activation > 0 is the binary code, which
equals sign() of the output for ReLU and the natural GELU binarisation, GELU(x) > 0 iff x > 0).
Layers inactive in the arch (mask weight 0) are dropped.
"""
from __future__ import annotations

import jax.numpy as jnp

from evonas_jax.proxies.common import active_units, count_distinct_patterns
from evonas_jax.proxies.registry import register


def nwot_kernel(codes, weight):
  """K = C C^T + (1 - C)(1 - C)^T over active units; codes (B, U) bool, weight (U,) -> (B, B)."""
  c = codes.astype(jnp.float32) * weight
  nc = (1.0 - codes.astype(jnp.float32)) * weight
  return c @ c.T + nc @ nc.T


@register("nwot")
def nwot(model, params, masks, batch, rng):
  """log|det K| (Mellor et al. v2, NASLib: summed over ReLU layers)."""
  _, acts = model.apply_acts(params, masks, batch["image"])
  codes, w = active_units(acts)
  return jnp.linalg.slogdet(nwot_kernel(codes, w))[1]


@register("swap")
def swap(model, params, masks, batch, rng):
  """Number of distinct per-unit activation patterns over the batch (Peng et al.)."""
  _, acts = model.apply_acts(params, masks, batch["image"])
  codes, w = active_units(acts)
  return count_distinct_patterns(codes, w)
