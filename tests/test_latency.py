"""Latency measurement and the lookup-table predictor (reduced tiny space, 16x16 inputs)."""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax import latency
from evonas_jax.space import Arch, get_space

IMG = (16, 16, 1)


@pytest.fixture(scope="module")
def space():
  # Fewer blocks and choices than the tiny preset: each table entry is one compile on 2 cores.
  return dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 2, 2, 1),
                             mlp_choices=(1.0, 2.0, 4.0), expand_choices=(1.0, 2.0),
                             d_state_choices=(16, 32))


@pytest.fixture(scope="module")
def table(space):
  return latency.LatencyTable.build(space, 10, IMG, warmup=5, runs=20, progress=False)


def test_timer_median_of_known_delay():
  # A host function that sleeps 20 ms (and one slow outlier call): the median must ignore it.
  calls = []

  def f(x):
    calls.append(1)
    time.sleep(0.2 if len(calls) == 4 else 0.02)
    return x

  ms = latency._time_fn(f, (jnp.zeros(()),), warmup=1, runs=7)
  assert len(calls) == 1 + 1 + 7
  assert 19.5 < ms < 40, ms


def test_table_entries_and_prediction(space, table):
  e = table.entries
  # 3 SSM stages x 2 expand x 2 d_state, 1 attention stage; 3 MLP widths per stage.
  assert [len(e[f"stage{s}"]["mixer"]) for s in range(4)] == [4, 4, 4, 1]
  assert all(len(e[f"stage{s}"]["mlp"]) == 3 for s in range(4))
  assert {"stem", "head", "downsample1", "downsample2", "downsample3"} <= set(e)
  assert all(v > 0 for v in jax.tree.leaves(e))
  o = e["dispatch_overhead"]
  assert 0 < o < 1.0   # one dispatch of a trivial op: microseconds, not milliseconds
  # (What predict sums is checked against the network itself in
  # test_prediction_of_a_cost_table_is_the_whole_network_cost.)
  # Removing a block can only lower the prediction (ops are clamped at >= 0 after the dispatch
  # overhead, so equality is possible when an op is pure dispatch at this size).
  big = space.largest()
  fewer = dataclasses.replace(big, depth=((1,), (1, 0), (1, 1), (1,)))
  assert table.predict(fewer) <= table.predict(big)


def _xla_macs(module, shape) -> int:
  """XLA's matmul/conv MACs of module.apply(variables, zeros(shape)) (values are irrelevant)."""
  from evonas_jax.nn.cost import xla_matmul_macs
  x = jnp.zeros(shape, jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  v = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  return xla_matmul_macs(module.apply, v, x)


def test_prediction_of_a_cost_table_is_the_whole_network_cost(space, table):
  """An independent reference for LatencyTable.predict. Fill a table with each timed op's cost
  instead of its time: XLA's matmul/conv MACs of the very op modules `build` times, at the
  stage shapes the real network produces. Costs add up exactly, so predict(arch) must equal
  the standalone network's MACs as XLA counts them on the whole network: this checks which
  ops predict sums (stem, each downsample, head, every active block's two halves, at the
  arch's widths, once per block) and that the timed ops cover the network. Per-call ops
  (stem, downsamples, head) carry a dispatch overhead o that predict must count exactly once."""
  from evonas_jax.nn.layers import depthwise_impl
  from evonas_jax.nn.stem import PatchMerging, Stem
  from evonas_jax.nn.supernet import subnet_model
  x = jnp.zeros((1, *IMG), jnp.float32)

  def network_macs(arch):
    net = subnet_model(space, arch, 10)
    return _xla_macs(net, (1, *IMG))

  net = subnet_model(space, space.largest(), 10)
  v = jax.eval_shape(net.init, jax.random.key(0), x)
  feats = jax.eval_shape(lambda v, x: net.apply(v, x, return_features=True)[1], v, x)
  o = 0.5   # MACs are integers: every sum below is exact in float64
  # "xla" depthwise convs are conv ops, so the blocks' cpe convs are costed too.
  with depthwise_impl("xla"):
    e = {"dispatch_overhead": o, "stem": _xla_macs(Stem(space.dims[0]), (1, *IMG)) + o,
         "head": _xla_macs(latency._Head(10), feats[-1].shape) + o}
    for s in range(1, space.num_stages):
      e[f"downsample{s}"] = _xla_macs(PatchMerging(space.dims[s]), feats[s - 1].shape) + o
    for s, f in enumerate(feats):
      st = e[f"stage{s}"] = {"mixer": {}, "mlp": {}}
      for key in table.entries[f"stage{s}"]["mixer"]:       # "attention" or "vssd/<d>/<n>"
        t, d_inner, d_state = (key.split("/") + [0, 0])[:3]
        st["mixer"][key] = _xla_macs(latency._MixerHalf(t, space.heads[s], int(d_inner),
                                                        int(d_state)), f.shape)
      for key in table.entries[f"stage{s}"]["mlp"]:
        st["mlp"][key] = _xla_macs(latency._MlpHalf(int(key)), f.shape)
    cost_table = latency.LatencyTable(e, table.meta)
    archs = [space.smallest(), space.largest()] + [space.decode(g) for g in space.sample(3, 4)]
    for arch in archs:
      assert cost_table.predict(arch) == o + network_macs(arch), arch.short()


def test_table_save_load_and_compatibility(space, table, tmp_path):
  p = str(tmp_path / "lut.json")
  table.save(p)
  t2 = latency.LatencyTable.load(p)
  assert t2.entries == table.entries and t2.meta["device"].startswith("cpu")
  a = space.decode(space.sample(5))
  assert t2.predict(a) == table.predict(a)
  t2.check_compatible(space, 10, IMG)
  with pytest.raises(ValueError, match="image_shape"):
    t2.check_compatible(space, 10, (28, 28, 1))


def test_spearman_matches_naive_ranks():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=20), rng.normal(size=20)
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  n = len(a)
  naive = 1 - 6 * np.sum((ra - rb) ** 2) / (n * (n * n - 1))
  assert latency.spearman(a, b) == pytest.approx(naive, abs=1e-12)
  # Ties: average ranks (scipy's convention), checked against scipy when it is installed.
  scipy_stats = pytest.importorskip("scipy.stats")
  c, d = np.array([1, 2, 2, 3, 5, 5, 5, 0.5]), np.array([3, 1, 4, 1, 5, 9, 2, 6])
  assert latency.spearman(c, d) == pytest.approx(scipy_stats.spearmanr(c, d).statistic, abs=1e-12)


def test_measure_and_validate(space, table):
  archs = [space.smallest(), space.largest(), space.decode(space.sample(7))]
  ms = latency.measure_latency(space, archs[0], 10, IMG, warmup=2, runs=5)
  assert 0 < ms < 1000
  rep = latency.validate_table(table, space, 10, IMG, archs=archs, warmup=2, runs=5,
                               progress=False)
  assert rep["num_archs"] == 3
  # (No ordering check: at 16x16 these nets take ~0.1-1 ms, dominated by dispatch and by the
  # noise of a shared 2-core machine; the ranking quality is what the search reports.)
  assert rep["predicted_ms"] == [table.predict(a) for a in archs]
  assert all(m > 0 for m in rep["measured_ms"])
  # The reported rho is the rank correlation of the reported predictions and measurements
  # (scipy as the reference; ties averaged).
  from scipy import stats
  want = stats.spearmanr(rep["predicted_ms"], rep["measured_ms"]).statistic
  assert rep["spearman_rho"] == pytest.approx(want, abs=1e-12)
  assert isinstance(Arch.from_dict(archs[2].to_dict()), Arch)
