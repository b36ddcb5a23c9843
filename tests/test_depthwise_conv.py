"""The depthwise 3x3 conv's custom VJP (shifted sums) against independent references.

Forward: a naive numpy loop over output pixels (padding 1, PyTorch's ceil(H / s) output size).
Backward: the vjp of XLA's own grouped convolution (`lax.conv_general_dilated` with
feature_group_count = C), a separate implementation, in float64 so that the only difference
left is summation order (bound 1e-12 on values of order 1-10).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn.layers import depthwise_conv3x3


def _naive(x, k, s):
  b, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = -(-h // s), -(-w // s)
  out = np.zeros((b, ho, wo, c))
  for p in range(ho):
    for q in range(wo):
      win = xp[:, p * s:p * s + 3, q * s:q * s + 3, :]          # (b, 3, 3, c)
      out[:, p, q, :] = np.einsum("bijc,ijc->bc", win, k[:, :, 0, :])
  return out


@pytest.mark.parametrize("shape,stride", [((2, 7, 5, 3), 1), ((2, 8, 8, 4), 2),
                                          ((1, 7, 6, 2), 2)])
def test_depthwise_forward_and_vjp_match_references(shape, stride):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = rng.normal(size=shape)
    k = rng.normal(size=(3, 3, 1, shape[-1]))
    y, vjp = jax.vjp(lambda a, b: depthwise_conv3x3(a, b, stride), jnp.asarray(x), jnp.asarray(k))
    np.testing.assert_allclose(np.asarray(y), _naive(x, k, stride), rtol=0, atol=1e-12)
    g = rng.normal(size=y.shape)
    dx, dk = vjp(jnp.asarray(g))

    def xla(a, b):
      return jax.lax.conv_general_dilated(a, b, (stride, stride), ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=shape[-1])
    _, vjp_ref = jax.vjp(xla, jnp.asarray(x), jnp.asarray(k))
    dx_ref, dk_ref = vjp_ref(jnp.asarray(g))
    assert dx.dtype == jnp.float64 and dk.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dk), np.asarray(dk_ref), rtol=0, atol=1e-12)
