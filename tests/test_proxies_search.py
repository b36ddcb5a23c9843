"""Training-free NSGA-II search with a proxy fitness on a tiny AutoFormer space."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.nn.autoformer import autoformer_proxy_model, init_autoformer
from evonas_jax.proxies import get_proxy
from evonas_jax.proxies.tf_search import training_free_search
from evonas_jax.space.autoformer import AutoFormerSpace


def test_tf_search_autoformer_front_is_nondominated(tmp_path):
  sp = AutoFormerSpace("T", image_size=16, patch_size=8, num_classes=4, width_div=24)
  _, v = init_autoformer(sp, jax.random.key(0))
  pm = autoformer_proxy_model(sp)
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 16, 16, 3)),
           "label": jnp.arange(4) % 4}
  out = training_free_search(sp, pm, v["params"], batch, proxy="nwot", population=8,
                             generations=2, workdir=str(tmp_path))
  g, s, z = out["genomes"], out["scores"], out["sizes"]
  assert len(g) >= 1
  for row, score, size in zip(g, s, z):
    sp.validate(row)
    # reported objectives are the proxy / cost of that genome
    m = sp.genome_to_masks(row)
    np.testing.assert_allclose(score, float(get_proxy("nwot")(pm, v["params"], m, batch, None)),
                               rtol=1e-4)
    assert size == sp.arch_cost(sp.decode(row))["params"]
  for i in range(len(g)):  # no member of the front dominates another
    for j in range(len(g)):
      assert not (s[j] >= s[i] and z[j] <= z[i] and (s[j] > s[i] or z[j] < z[i]))
  front = json.loads((tmp_path / "pareto.json").read_text())["front"]
  assert len(front) == len(g)
