"""`ProxyModel`: what a proxy needs to know about a network family (the design's "apply_fn").

apply(params, masks, x, bn=True) -> logits (B, K)
apply_acts(params, masks, x, bn=True) -> (logits, acts), acts = [(pre_activation (B, ...), w)] in
  forward order, one entry per ReLU/GELU; w in {0, 1} says whether the layer is active in the arch.
apply_probed(params, perturbations, masks, x) -> (logits, outs): `outs` and `perturbations` are
  pytrees with the same structure of conv/linear outputs; d loss / d perturbation = d loss / d output.
zero_perturbations(params, masks, x) -> the zero perturbation pytree for that input shape.
weight_paths: conv/linear kernel paths into params, forward order (biases and norms excluded).
cost(masks) -> {"params", "macs"} of the active network (jnp, vmappable) or None.
probe_kernel(probe_path) -> path into params of the kernel whose output that probe perturbs (a
  tuple of str; the probe path is the perturbation-tree path). Fisher's Suite-Zero weighting needs
  it for each layer's fan-in.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ProxyModel:
  apply: Callable
  apply_acts: Callable | None
  apply_probed: Callable | None
  zero_perturbations: Callable | None
  weight_paths: tuple
  cost: Callable | None = None
  name: str = "model"
  probe_kernel: Callable | None = None

  def weights(self, params) -> list:
    """Conv/linear kernels in forward order (a trailing int in a path slices a scanned kernel)."""
    out = []
    for path in self.weight_paths:
      node = params
      for k in path:
        node = node[k]
      out.append(node)
    return out

  def with_weights(self, params, weights: list) -> Any:
    """params with the kernels at weight_paths replaced (pure; copies the dict spine only).
    Slices of one scanned kernel are re-stacked in index order."""
    def put(node, path, value):
      if not path:
        return value
      new = dict(node)
      new[path[0]] = put(node[path[0]], path[1:], value)
      return new
    stacked: dict = {}
    for path, w in zip(self.weight_paths, weights):
      if isinstance(path[-1], int):
        stacked.setdefault(path[:-1], {})[path[-1]] = w
      else:
        params = put(params, path, w)
    for base, parts in stacked.items():
      params = put(params, base, jnp.stack([parts[i] for i in sorted(parts)]))
    return params


def default_probe_kernel(path: tuple) -> tuple:
  """Probe -> kernel naming rule of our linen models: `probe_X` next to submodule `X`
  (autoformer: blocks/probe_qkv -> blocks/qkv/kernel), or `probe` inside a module whose conv is
  `conv` (nb201 PConv: .../pconv/probe -> .../pconv/conv/kernel)."""
  *parent, last = path
  if last.startswith("probe_"):
    return tuple(parent) + (last[len("probe_"):], "kernel")
  if last == "probe":
    return tuple(parent) + ("conv", "kernel")
  raise ValueError(f"no kernel rule for probe {path!r}")


def linen_proxy_model(module, weight_paths, cost=None, name="model",
                      probe_kernel=default_probe_kernel) -> ProxyModel:
  """ProxyModel of a linen module with `__call__(x, masks, bn=True, capture=False)` that
  perturbs its conv/linear outputs as `self.perturb(P, y)` and sows them as
  `self.sow("outs", P + "_out", y)` (the pairing Fisher relies on)."""
  def apply(params, masks, x, bn=True):
    return module.apply({"params": params}, x, masks, bn=bn)

  def apply_acts(params, masks, x, bn=True):
    return module.apply({"params": params}, x, masks, bn=bn, capture=True)

  def apply_probed(params, perturbations, masks, x):
    logits, state = module.apply({"params": params, "perturbations": perturbations}, x, masks,
                                 mutable=["outs"])
    outs = jax.tree.map(lambda t: t[0], state["outs"], is_leaf=lambda t: isinstance(t, tuple))
    return logits, outs

  def zero_perturbations(params, masks, x):
    _, state = module.apply({"params": params}, x, masks, mutable=["perturbations", "outs"])
    return state["perturbations"]

  return ProxyModel(apply, apply_acts, apply_probed, zero_perturbations, tuple(weight_paths),
                    cost, name, probe_kernel)


def nb201_proxy_model(cfg) -> ProxyModel:
  from evonas_jax.nn import nb201
  module = nb201.NB201Net(cfg)
  def probe_kernel(path):
    # The classifier's probe sits at the top level of NB201Net.
    return ("classifier", "kernel") if path == ("probe",) else default_probe_kernel(path)

  return linen_proxy_model(module, nb201.weight_paths(cfg), lambda m: nb201.nb201_cost(cfg, m),
                           name="nb201", probe_kernel=probe_kernel)
