"""cross_scan / cross_merge vs an index-by-index naive implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.kernels import cross_merge, cross_scan


def naive_cross_scan(x):
    b, c, h, w = x.shape
    out = np.zeros((b, 4, c, h * w), x.dtype)
    L = h * w
    for i in range(h):
        for j in range(w):
            out[:, 0, :, i * w + j] = x[:, :, i, j]
            out[:, 1, :, j * h + i] = x[:, :, i, j]
            out[:, 2, :, L - 1 - (i * w + j)] = x[:, :, i, j]
            out[:, 3, :, L - 1 - (j * h + i)] = x[:, :, i, j]
    return out


def naive_cross_merge(y):
    b, _, c, h, w = y.shape
    L = h * w
    seq = y.reshape(b, 4, c, L)
    out = np.zeros((b, c, L), y.dtype)
    for i in range(h):
        for j in range(w):
            p = i * w + j
            out[:, :, p] = (seq[:, 0, :, i * w + j] + seq[:, 1, :, j * h + i]
                            + seq[:, 2, :, L - 1 - (i * w + j)] + seq[:, 3, :, L - 1 - (j * h + i)])
    return out


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 7), (1, 1, 3, 3), (2, 1, 6, 2)])
def test_cross_scan_matches_naive(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(cross_scan(jnp.asarray(x))), naive_cross_scan(x))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 7), (2, 1, 6, 2)])
def test_cross_merge_matches_naive(shape):
    b, c, h, w = shape
    y = np.random.default_rng(1).normal(size=(b, 4, c, h, w)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cross_merge(jnp.asarray(y))), naive_cross_merge(y),
                               rtol=1e-6, atol=1e-6)


def test_cross_merge_is_adjoint_of_cross_scan():
    b, c, h, w = 2, 3, 4, 5
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(b, c, h, w)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(b, 4, c, h * w)), jnp.float32)
    # <cross_scan(x), y> == <x, cross_merge(y)>
    lhs = jnp.vdot(cross_scan(x), y)
    rhs = jnp.vdot(x.reshape(b, c, h * w), cross_merge(y.reshape(b, 4, c, h, w)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
    # and the VJP of cross_scan is exactly cross_merge
    _, vjp = jax.vjp(cross_scan, x)
    (gx,) = vjp(y)
    np.testing.assert_allclose(gx.reshape(b, c, h * w), cross_merge(y.reshape(b, 4, c, h, w)),
                               rtol=1e-6, atol=1e-6)


def test_roundtrip_scales_by_four():
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    out = cross_merge(cross_scan(x).reshape(2, 4, 3, 4, 5))
    np.testing.assert_allclose(out, 4 * x.reshape(2, 3, 20))


def test_bad_shapes():
    with pytest.raises(ValueError, match="cross_scan"):
        cross_scan(jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="cross_merge"):
        cross_merge(jnp.zeros((2, 3, 3, 4, 5)))
