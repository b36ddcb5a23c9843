"""Registry of zero-cost proxies by name.

A proxy is a pure function `proxy(model, params, masks, batch, rng) -> scalar` (float32):
* model: a `ProxyModel` (evonas_jax.proxies.model) -- the apply functions and the forward-ordered
  weight-layer list of one network family; the "apply_fn" of the design;
* params: the network's params pytree; masks: one arch as data (masked mode);
* batch: {"image": (B, H, W, C) float32, "label": (B,) int32}; rng: a jax key.
Sign convention: **higher = better** for every registered proxy (the scoring/correlation code never
flips signs). Every proxy is jit- and vmap-able over masks, params (init seeds) and rng.
"""
from __future__ import annotations

from typing import Callable

_PROXIES: dict[str, Callable] = {}


def register(name: str):
  def deco(fn):
    if name in _PROXIES:
      raise ValueError(f"proxy {name!r} already registered")
    _PROXIES[name] = fn
    fn.proxy_name = name
    return fn
  return deco


def get_proxy(name: str) -> Callable:
  if name not in _PROXIES:
    raise ValueError(f"unknown proxy {name!r}; allowed: {sorted(_PROXIES)}")
  return _PROXIES[name]


def proxy_names() -> tuple[str, ...]:
  return tuple(_PROXIES)
