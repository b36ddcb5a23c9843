"""Reference selective scan (Mamba S6 recurrence) written with ``lax.scan``.

This is the numerical ground truth for the Pallas kernels and the CPU
execution path.  Gradients come from plain JAX autodiff through ``lax.scan``.

Shapes (``b`` batch, ``d`` channels, ``l`` length, ``n`` state size,
``g`` groups of channels sharing one B/C):

* ``u, delta``: ``(b, d, l)``
* ``A``: ``(d, n)``
* ``B, C``: ``(b, g, n, l)`` (the public op turns ungrouped ``(b, n, l)`` into ``g = 1``)
* ``D, delta_bias``: ``(d,)`` or ``None``
* ``z``: ``(b, d, l)`` or ``None``

Recurrence (state ``h`` of shape ``(b, d, n)``, kept in float32)::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t;   y_t *= silu(z_t) if z is given
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def prepare_delta(delta, delta_bias, delta_softplus):
    """fp32 ``delta`` ``(b, d, l)`` with the optional bias ``(d,)`` and softplus applied."""
    delta = delta.astype(F32)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(F32)[:, None]
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    return delta


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, unroll=1):
    """Selective scan via ``lax.scan`` over time.

    ``B``/``C`` must already be grouped ``(b, g, n, l)``.  Returns
    ``(y, last_state)``: ``y`` ``(b, d, l)`` float32 (cast by the caller) and
    ``last_state`` ``(b, d, n)`` float32.
    """
    b, d, l = u.shape
    g, n = B.shape[1], B.shape[2]
    dpg = d // g  # channels per group
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    u32 = u.astype(F32)
    # Channel axis split as (g, dpg) so a group's B_t/C_t broadcasts over its
    # channels without materialising a (b, d, n, l) copy.
    A4 = A.astype(F32).reshape(g, dpg, n)

    def step(h, xs):
        dt, ut, bt, ct = xs  # dt, ut: (b, g, dpg); bt, ct: (b, g, n)
        dA = jnp.exp(dt[..., None] * A4)
        h = dA * h + (dt * ut)[..., None] * bt[:, :, None, :]
        y = jnp.sum(h * ct[:, :, None, :], axis=-1)
        return h, y

    # Time-major inputs for lax.scan.
    xs = (jnp.moveaxis(delta.reshape(b, g, dpg, l), -1, 0),
          jnp.moveaxis(u32.reshape(b, g, dpg, l), -1, 0),
          jnp.moveaxis(B.astype(F32), -1, 0),
          jnp.moveaxis(C.astype(F32), -1, 0))
    h0 = jnp.zeros((b, g, dpg, n), F32)
    # Inside shard_map (check_vma) the carry must vary over the same mesh axes as the inputs it
    # is combined with, else lax.scan rejects the carry type change.
    from evonas_jax.parallel import varying_axes
    vma = frozenset().union(*(varying_axes(t) for t in (delta, u32, B, C, A4)))
    if vma:
        h0 = jax.lax.pcast(h0, tuple(sorted(vma)), to="varying")
    h_last, ys = jax.lax.scan(step, h0, xs, unroll=unroll)
    y = jnp.moveaxis(ys, 0, -1).reshape(b, d, l)
    if D is not None:
        y = y + D.astype(F32)[:, None] * u32
    if z is not None:
        y = y * jax.nn.silu(z.astype(F32))
    return y, h_last.reshape(b, d, n)
