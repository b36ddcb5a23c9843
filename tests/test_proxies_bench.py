"""CI-size run of `python -m evonas_jax.proxies.bench` (tiny network, 4 archs, 2 proxies)."""
import csv
import json

import numpy as np
import pytest
from scipy import stats

from evonas_jax.nn import nb201 as nbnet
from evonas_jax.space import nb201 as nbspace


@pytest.fixture(scope="module")
def cfg():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "proxies_nb201.py")
  spec = importlib.util.spec_from_file_location("cfg_nb201", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.num_archs = 4
  c.arch_batch = 4
  c.net.channels = 2
  c.net.cells = 1
  c.proxies = ("params", "lswag")
  c.lswag.calib_archs = 4
  return c


def test_bench_ci_size(cfg, tmp_path):
  from evonas_jax.data.cifar_samples import foolbox_data_dir
  from evonas_jax.proxies import bench
  from evonas_jax.proxies.benchdata import load_nb201_table
  try:
    foolbox_data_dir()   # the 20 CIFAR-10 images (`make test` installs foolbox's data files)
  except FileNotFoundError as e:
    pytest.skip(str(e))
  table = load_nb201_table()   # shipped in the package: never a reason to skip
  corr = bench.run(cfg, str(tmp_path))
  with open(tmp_path / "nb201_scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["nb201_index", "arch_str", "params", "lswag"]
  assert len(rows) == 4
  idx = np.array([int(r["nb201_index"]) for r in rows])
  assert (idx == np.sort(np.random.default_rng(0).choice(15625, 4, replace=False))).all()
  for r in rows:
    assert r["arch_str"] == table["arch_str"][int(r["nb201_index"])]
    g = nbspace.str_to_ops(r["arch_str"])
    want = float(nbnet.nb201_cost(nbnet.NB201Config(channels=2, cells=1),
                                  nbspace.genome_to_masks(g))["params"])
    assert float(r["params"]) == want
  # correlations recomputed independently from the CSV
  p = np.array([float(r["params"]) for r in rows])
  acc = table["cifar10"][idx]
  got = corr["ours"]["params"]["cifar10"]["spearman"]
  np.testing.assert_allclose(got, stats.spearmanr(p, acc).statistic, rtol=1e-12)
  on_disk = json.loads((tmp_path / "nb201_correlations.json").read_text())
  assert set(on_disk["ours"]) == {"params", "lswag"}
  assert set(on_disk["ours"]["lswag"]) >= {"cifar10", "cifar100", "ImageNet16-120"}
  band = on_disk["settings"]["lswag_band_calibration"]["band"]
  assert 0 <= band[0] <= band[1] <= 9
  # rerun resumes from the per-proxy cache and gives the same file
  before = (tmp_path / "nb201_scores.csv").read_text()
  bench.run(cfg, str(tmp_path))
  assert (tmp_path / "nb201_scores.csv").read_text() == before
