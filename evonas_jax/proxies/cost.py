"""#params and MACs of the active network as proxies (higher = better, as in Suite-Zero)."""
from __future__ import annotations

import jax.numpy as jnp

from evonas_jax.proxies.registry import register


def _cost(model, masks):
  if model.cost is None:
    raise ValueError(f"model {model.name!r} has no cost function; params/macs proxies need one")
  return model.cost(masks)


@register("params")
def params_proxy(model, params, masks, batch, rng):
  return jnp.asarray(_cost(model, masks)["params"], jnp.float32)


@register("macs")
def macs_proxy(model, params, masks, batch, rng):
  return jnp.asarray(_cost(model, masks)["macs"], jnp.float32)
