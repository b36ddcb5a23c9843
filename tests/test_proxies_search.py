"""Training-free NSGA-II search with a proxy fitness on a tiny AutoFormer space."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


# ------------------------------------------------ NB201 search with a HW-NAS-Bench latency objective


@pytest.fixture(scope="module")
def nb201_setup():
  """A 2-channel, 1-cell NB201 proxy network on 8x8 inputs: (proxy model, params, batch)."""
  from evonas_jax.nn import nb201 as nbnet
  from evonas_jax.proxies import nb201_proxy_model
  image_size = 8
  cfg = nbnet.NB201Config(channels=2, cells=1, num_classes=4, image_size=image_size)
  _, v = nbnet.init_nb201(cfg, jax.random.key(0))
  batch = {"image": jax.random.normal(jax.random.key(1), (4, image_size, image_size, 3)),
           "label": jnp.arange(4) % 4}
  return nb201_proxy_model(cfg), v["params"], batch


def test_tf_search_nb201_uses_hw_nas_bench_latency(nb201_setup, tmp_path, monkeypatch):
  """The front's second objective is the shipped HW-NAS-Bench latency of each genome (looked up
  here through the NB201 table, independently of the search's base-5 code), the front is
  non-dominated, and pareto.json names the objective."""
  from evonas_jax.proxies import benchdata
  from evonas_jax.space.nb201 import NB201Space
  monkeypatch.delenv("EVONAS_BENCHDATA", raising=False)   # the shipped tables only
  pm, params, batch = nb201_setup
  # "params" as the proxy: cheap to compile (the wiring under test is the second objective).
  out = training_free_search(NB201Space(), pm, params, batch, proxy="params", population=8,
                             generations=2, workdir=str(tmp_path), latency_device="fpga")
  table = benchdata.load_nb201_table()
  row = {t: i for i, t in enumerate(table["naslib_op_indices"])}
  lat = benchdata.load_hw_latency("fpga", "cifar10")
  g, s, z = out["genomes"], out["scores"], out["sizes"]
  assert out["size_name"] == "fpga_latency_ms" and len(g) >= 1
  for genome, latency in zip(g, z):
    key = "(" + ", ".join(str(int(v)) for v in genome) + ")"
    np.testing.assert_allclose(latency, lat[row[key]], rtol=1e-6)
  for i in range(len(g)):
    for j in range(len(g)):
      assert not (s[j] >= s[i] and z[j] <= z[i] and (s[j] > s[i] or z[j] < z[i]))
  meta = json.loads((tmp_path / "pareto.json").read_text())
  assert meta["objectives"] == ["-params", "fpga_latency_ms"] and meta["latency_device"] == "fpga"
  # Another device gives another objective: the same genomes cost differently on the Pi 4.
  from evonas_jax.proxies.tf_search import MISSING_LATENCY_MS, nb201_latency_lookup
  pi, _ = nb201_latency_lookup("raspi4")
  pi_lat = benchdata.load_hw_latency("raspi4")
  for genome in g:
    key = "(" + ", ".join(str(int(v)) for v in genome) + ")"
    np.testing.assert_allclose(float(pi(jnp.asarray(genome))), pi_lat[row[key]], rtol=1e-6)
  # Cells without an Edge TPU measurement cost MISSING_LATENCY_MS there.
  tpu, _ = nb201_latency_lookup("edgetpu", "ImageNet16-120")
  missing = int(np.flatnonzero(np.isnan(benchdata.load_hw_latency("edgetpu", "ImageNet16-120")))[0])
  gm = jnp.asarray([int(v) for v in table["naslib_op_indices"][missing].strip("()").split(",")])
  assert float(tpu(gm)) == MISSING_LATENCY_MS


def test_tf_search_latency_device_errors():
  from evonas_jax.proxies import bench
  from evonas_jax.space.nb201 import NB201Space
  # Both are refused before the network is touched.
  pm = params = batch = None
  allowed = r"allowed: \('edgegpu', 'raspi4', 'edgetpu', 'pixel3', 'eyeriss', 'fpga'\)"
  with pytest.raises(ValueError, match=r"'jetson' is not a HW-NAS-Bench device; " + allowed):
    training_free_search(NB201Space(), pm, params, batch, proxy="nwot", population=4,
                         generations=1, latency_device="jetson")
  with pytest.raises(ValueError, match="needs the NB201 space"):
    training_free_search(AutoFormerSpace("T", image_size=16, patch_size=8, num_classes=4,
                                         width_div=24), pm, params, batch, latency_device="fpga")
  # The benchmark config is checked before any work.
  import ml_collections
  c = ml_collections.ConfigDict({"latency_device": "jetson", "latency_dataset": "cifar10"})
  with pytest.raises(ValueError, match=allowed):
    bench.check_search_config(c)
  c = ml_collections.ConfigDict({"latency_device": "fpga", "latency_dataset": "cifar100"})
  with pytest.raises(ValueError, match="latency_dataset='cifar100'"):
    bench.check_search_config(c)


def test_nb201_config_latency_device_reaches_the_search(nb201_setup, tmp_path, monkeypatch):
  """configs/proxies_nb201.py's latency_device and search block drive bench.run_search."""
  from helpers import load_config
  from evonas_jax.proxies import bench, benchdata
  monkeypatch.delenv("EVONAS_BENCHDATA", raising=False)
  c = load_config("proxies_nb201")
  assert c.latency_device == "" and c.search.enabled is False
  bench.check_search_config(c)
  c.latency_device, c.latency_dataset = "edgegpu", "ImageNet16-120"
  c.search.population, c.search.generations, c.search.proxy = 4, 1, "params"
  pm, params, batch = nb201_setup
  out = bench.run_search(c, pm, params, batch, str(tmp_path))
  assert out["size_name"] == "edgegpu_latency_ms"
  lat = benchdata.load_hw_latency("edgegpu", "ImageNet16-120")
  assert set(np.round(out["sizes"], 4)) <= set(np.round(lat.astype(np.float32), 4))
  assert (tmp_path / "search" / "pareto.csv").read_text().splitlines()[0] == \
      "genome,params,edgegpu_latency_ms"
