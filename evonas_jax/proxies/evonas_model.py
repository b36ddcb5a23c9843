"""ProxyModel adapter for the EvoNAS / hybrid VSS-ViT supernet in masked mode.

apply = `model.apply(variables, x, masks, train=True)` with BatchNorm on batch statistics (stem and
downsample only; running stats discarded), masks = `genome_to_masks(space, genome)`, so every
proxy is vmappable over genomes. The weight layers are all `kernel` leaves in creation (= forward)
order. Activation layers for NWOT / SWAP / L-SWAG's Psi are the four stage outputs
(`return_features=True`): the supernet does not expose its inner GELUs, so this is a coarser
expressivity reading than the NB201/AutoFormer models give [our choice]. Fisher (needs probed
layer outputs) and params/macs (the supernet's cost is computed per static Arch, not from masks)
are not available for this model and raise a clear error.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from evonas_jax.proxies.model import ProxyModel


def _kernel_paths(tree, prefix=()):
  out = []
  for k, v in tree.items():  # dict insertion order = module creation order
    if isinstance(v, dict):
      out += _kernel_paths(v, prefix + (k,))
    elif k == "kernel":
      out.append(prefix + (k,))
  return out


def supernet_proxy_model(model, variables) -> ProxyModel:
  batch_stats = variables.get("batch_stats", {})

  def _run(params, masks, x, feats):
    v = {"params": params, "batch_stats": batch_stats}
    out, _ = model.apply(v, x, masks, train=True, return_features=feats, mutable=["batch_stats"])
    return out

  def apply(params, masks, x, bn=True):
    return _run(params, masks, x, False)

  def apply_acts(params, masks, x, bn=True):
    logits, feats = _run(params, masks, x, True)
    return logits, [(f, jnp.float32(1.0)) for f in feats]

  def no_probe(*a, **k):
    raise ValueError("fisher is not available for the EvoNAS supernet model (no probed outputs)")

  return ProxyModel(apply, apply_acts, no_probe, no_probe,
                    tuple(_kernel_paths(jax.tree.map(lambda t: t, variables["params"]))),
                    None, name="evonas_supernet")
