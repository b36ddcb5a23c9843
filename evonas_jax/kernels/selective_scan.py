"""Public selective-scan op: shape checks, backend choice, differentiation.

``selective_scan`` follows the semantics of mamba's ``selective_scan_ref``
(see ``scan_reference`` for the recurrence).  Backends:

* ``"reference"``: ``lax.scan``; gradients by JAX autodiff.
* ``"pallas"``: Pallas Triton kernels (GPU only) wrapped in a ``custom_vjp``
  whose backward pass is a second Pallas kernel.
* ``"pallas_interpret"``: the same kernels with ``interpret=True`` (runs on
  CPU; used by the tests).
* ``"auto"``: ``"pallas"`` when ``jax.default_backend() == "gpu"``, else
  ``"reference"``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from evonas_jax.kernels.scan_reference import selective_scan_reference

BACKENDS = ("auto", "reference", "pallas", "pallas_interpret")


def resolve_backend(backend: str) -> str:
    """Map ``backend`` (one of ``BACKENDS``) to a concrete backend name."""
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; "
                         f"allowed values are {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "reference"
    return backend


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    """Validate shapes/dtypes; return ``(b, d, l, n, g)``."""
    def shp(x):
        return tuple(getattr(x, "shape", ()))

    if len(shp(u)) != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {shp(u)}")
    b, d, l = u.shape
    if l < 1 or d < 1 or b < 1:
        raise ValueError(f"selective_scan: empty u of shape {shp(u)}")
    if shp(delta) != shp(u):
        raise ValueError(f"selective_scan: delta must have u's shape {shp(u)}, got {shp(delta)}")
    if len(shp(A)) != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (dim={d}, state), got {shp(A)}")
    n = A.shape[1]
    if shp(B) != shp(C):
        raise ValueError(f"selective_scan: B and C must have the same shape, got {shp(B)} and {shp(C)}")
    if len(shp(B)) == 3:
        g = 1
        expected = (b, n, l)
    elif len(shp(B)) == 4:
        g = B.shape[1]
        if g < 1 or d % g:
            raise ValueError(f"selective_scan: dim={d} is not divisible by the number of "
                             f"B/C groups {g}")
        expected = (b, g, n, l)
    else:
        raise ValueError("selective_scan: B/C must be (batch, state, length) or "
                         f"(batch, groups, state, length), got {shp(B)}")
    if shp(B) != expected:
        raise ValueError(f"selective_scan: B/C shape {shp(B)} does not match expected {expected} "
                         f"(batch={b}, state={n} from A, length={l})")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and shp(v) != (d,):
            raise ValueError(f"selective_scan: {name} must be (dim={d},), got {shp(v)}")
    if z is not None and shp(z) != shp(u):
        raise ValueError(f"selective_scan: z must have u's shape {shp(u)}, got {shp(z)}")
    for name, v in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                     ("z", z), ("delta_bias", delta_bias)):
        if v is not None and not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"selective_scan: {name} must be a floating array, got {v.dtype}")
    return b, d, l, n, g


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, backend="auto"):
    """Selective scan (Mamba S6), mamba ``selective_scan_ref`` semantics.

    Args:
      u: ``(batch, dim, length)`` input.
      delta: ``(batch, dim, length)`` step sizes (before bias/softplus).
      A: ``(dim, state)`` state matrix (diagonal per channel), usually negative.
      B, C: ``(batch, state, length)`` or grouped ``(batch, groups, state,
        length)``; channel ``c`` uses group ``c // (dim // groups)``.
      D: optional ``(dim,)`` skip connection.
      z: optional ``(batch, dim, length)`` gate: ``y *= silu(z)``.
      delta_bias: optional ``(dim,)`` added to ``delta``.
      delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
      return_last_state: also return the final state.
      backend: ``"auto" | "reference" | "pallas" | "pallas_interpret"``.

    Returns:
      ``y`` ``(batch, dim, length)`` in ``u.dtype``, or ``(y, last_state)``
      with ``last_state`` ``(batch, dim, state)`` float32.  The state is always
      accumulated in float32, also for bfloat16 inputs.
    """
    backend = resolve_backend(backend)
    b, d, l, n, g = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]  # ungrouped == one group
    if backend == "reference":
        y, last = selective_scan_reference(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                           delta_softplus=delta_softplus)
    else:
        from evonas_jax.kernels.scan_pallas import selective_scan_pallas
        y, last = selective_scan_pallas(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                        delta_softplus=delta_softplus,
                                        interpret=(backend == "pallas_interpret"))
    y = y.astype(u.dtype)
    return (y, last) if return_last_state else y
