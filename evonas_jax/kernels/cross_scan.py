"""SS2D cross-scan helpers (VMamba): four 1-D scan orders over a 2-D map.

Direction ``k`` of ``cross_scan`` (``L = H * W``):

0. row-major: ``x[..., h, w]`` at position ``h * W + w``
1. column-major (the transposed map): ``x[..., h, w]`` at ``w * H + h``
2. reversed row-major: direction 0 read back to front
3. reversed column-major: direction 1 read back to front

``cross_merge`` is the adjoint (transpose) of ``cross_scan``: it undoes each
direction's permutation and sums the four directions.
"""
from __future__ import annotations

import jax.numpy as jnp


def cross_scan(x):
    """``(batch, channels, H, W)`` -> ``(batch, 4, channels, H * W)``."""
    if x.ndim != 4:
        raise ValueError(f"cross_scan: x must be (batch, channels, H, W), got shape {x.shape}")
    b, c, h, w = x.shape
    row = x.reshape(b, c, h * w)
    col = jnp.swapaxes(x, 2, 3).reshape(b, c, h * w)
    fwd = jnp.stack([row, col], axis=1)
    return jnp.concatenate([fwd, jnp.flip(fwd, axis=-1)], axis=1)


def cross_merge(y):
    """``(batch, 4, channels, H, W)`` -> ``(batch, channels, H * W)`` (row-major).

    ``y[:, k]`` holds direction ``k``'s sequence (the layout ``cross_scan``
    produces) with its length axis viewed as ``(H, W)``, i.e. the scan output
    reshaped with the *original* image size.  Each direction is mapped back to
    row-major order and the four are summed.
    """
    if y.ndim != 5 or y.shape[1] != 4:
        raise ValueError(f"cross_merge: y must be (batch, 4, channels, H, W), got shape {y.shape}")
    b, _, c, h, w = y.shape
    seq = y.reshape(b, 4, c, h * w)
    # Undo the reversal of directions 2/3 first, then the transposition of 1/3.
    fwd = seq[:, 0:2] + jnp.flip(seq[:, 2:4], axis=-1)
    row = fwd[:, 0]
    # Direction 1's sequence is the (W, H) transposed map in row-major order.
    col = jnp.swapaxes(fwd[:, 1].reshape(b, c, w, h), 2, 3).reshape(b, c, h * w)
    return row + col
