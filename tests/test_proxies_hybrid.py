"""Proxies on the hybrid EvoNAS supernet in masked mode (vmapped over genomes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.proxies import get_proxy


@pytest.mark.slow  # ~100 s CPU: compiles the backward of the SSM/attention supernet
def test_proxies_on_hybrid_supernet():
  """Gradient and activation proxies run on the hybrid EvoNAS supernet, vmapped over genomes."""
  from evonas_jax.nn import init_supernet
  from evonas_jax.proxies.evonas_model import supernet_proxy_model
  from evonas_jax.space import genome_to_masks, get_space
  sp = get_space("hybrid", preset="tiny")
  model, variables = init_supernet(sp, 10, jax.random.key(0), image_shape=(16, 16, 1))
  pm = supernet_proxy_model(model, variables)
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 16, 16, 1)),
           "label": jnp.arange(4)}
  g = jnp.asarray(sp.sample(0, 2))
  for name in ("grad_norm", "nwot"):
    fn = get_proxy(name)
    many = jax.jit(jax.vmap(lambda gg, b: fn(pm, variables["params"], genome_to_masks(sp, gg),
                                             b, None), (0, None)))(g, batch)
    assert np.isfinite(np.asarray(many)).all()
    if name == "nwot":  # loop check on the forward-only proxy (a second backward compile is slow)
      one = fn(pm, variables["params"], genome_to_masks(sp, g[1]), batch, None)
      np.testing.assert_allclose(float(many[1]), float(one), rtol=1e-4)
  with pytest.raises(ValueError, match="no cost function"):
    get_proxy("params")(pm, variables["params"], genome_to_masks(sp, g[0]), batch, None)
