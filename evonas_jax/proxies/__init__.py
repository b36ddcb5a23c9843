"""Zero-cost proxies (registry by name), L-SWAG, LIBRA-NAS and the NAS-Bench-201 benchmark.

    from evonas_jax.proxies import get_proxy, proxy_names, nb201_proxy_model
    score = get_proxy("lswag")(model, params, masks, batch, rng)   # higher = better
"""
from evonas_jax.proxies import activation, cost, gradient, lswag, zico  # noqa: F401  (register)
from evonas_jax.proxies.model import ProxyModel, linen_proxy_model, nb201_proxy_model
from evonas_jax.proxies.registry import get_proxy, proxy_names, register

__all__ = ["ProxyModel", "linen_proxy_model", "nb201_proxy_model", "get_proxy", "proxy_names",
           "register"]
