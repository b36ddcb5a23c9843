"""Selective-scan (Mamba S6) kernels and SS2D cross-scan helpers.

Public API:

* ``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
  delta_softplus=False, return_last_state=False, backend="auto")``
* ``cross_scan(x)`` / ``cross_merge(y)`` for VMamba's SS2D.
"""
from evonas_jax.kernels.cross_scan import cross_merge, cross_scan
from evonas_jax.kernels.selective_scan import BACKENDS, selective_scan
from evonas_jax.kernels.scan_reference import selective_scan_reference

__all__ = ["BACKENDS", "cross_merge", "cross_scan", "selective_scan", "selective_scan_reference"]
