"""A tiny masked MLP ProxyModel: the reference network of the proxy tests (small enough for
hand-written numpy references) and the smallest example of the ProxyModel conventions.

x (B, D) -> z1 = x W1 -> h1 = relu(z1) * m1 -> z2 = h1 W2 -> h2 = relu(z2) * m2 -> h2 W3 + b3.
masks = {"h1": (H1,), "h2": (H2,)} 0/1 unit masks (an arch as data). No BatchNorm (`bn` is
accepted and ignored). Kernels W1, W2, W3 are the weight layers, in that order.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from evonas_jax.proxies.model import linen_proxy_model


class TinyMLP(nn.Module):
  hidden: tuple = (6, 5)
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, masks, bn: bool = True, capture: bool = False):
    x = x.reshape(x.shape[0], -1)
    acts = []
    for i, (h, name) in enumerate(zip(self.hidden, ("h1", "h2"))):
      z = nn.Dense(h, use_bias=False, name=f"W{i + 1}",
                   kernel_init=nn.initializers.normal(1.0))(x)
      z = self.perturb(f"probe{i + 1}", z)
      self.sow("outs", f"probe{i + 1}_out", z)
      acts.append((z, masks[name]))
      x = nn.relu(z) * masks[name]
    out = nn.Dense(self.num_classes, name="W3", kernel_init=nn.initializers.normal(1.0),
                   bias_init=nn.initializers.normal(1.0))(x)
    out = self.perturb("probe3", out)
    self.sow("outs", "probe3_out", out)
    return (out, acts) if capture else out


def tiny_cost(masks, in_dim: int, num_classes: int):
  """Active params / MACs: active units' fan-in and fan-out weights (+ the output bias)."""
  h1, h2 = jnp.sum(masks["h1"]), jnp.sum(masks["h2"])
  macs = in_dim * h1 + h1 * h2 + h2 * num_classes
  return {"params": macs + num_classes, "macs": macs}


def tiny_proxy_model(in_dim: int, hidden=(6, 5), num_classes: int = 3):
  module = TinyMLP(tuple(hidden), num_classes)
  paths = (("W1", "kernel"), ("W2", "kernel"), ("W3", "kernel"))
  return module, linen_proxy_model(module, paths, lambda m: tiny_cost(m, in_dim, num_classes),
                                   name="tiny_mlp",
                                   probe_kernel=lambda p: ("W" + p[-1][len("probe"):], "kernel"))
