"""The search end to end on real data (digits, 16x16, tiny preset with a smaller supernet):
a killed search resumes to the same front as an uninterrupted one; outputs are consistent;
bad config fields fail early, naming the field and the allowed values."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from evonas_jax import search_lib
from evonas_jax.nn.cost import arch_cost
from evonas_jax.space import Arch


def _config(tmp_root):
  from helpers import load_config, use_digits
  c = use_digits(load_config("search_quickstart"), tmp_root)
  # A smaller space: compile time on 2 cores scales with blocks and latency-table entries.
  c.space_overrides.max_depths = (1, 2, 2, 1)
  c.space_overrides.mlp_choices = (1.0, 4.0)
  c.space_overrides.expand_choices = (1.0, 2.0)
  c.space_overrides.d_state_choices = (16, 32)
  c.population_size = 6
  c.num_generations = 3
  c.evaluator.num_eval_batches = 2
  c.evaluator.eval_batch_size = 64
  c.evaluator.calib_batches = 1
  c.evaluator.calib_batch_size = 32
  c.evaluator.group_size = 2
  c.evaluator.num_devices = 1   # conftest's 8 fake devices would mean 8 sub-mesh compiles
  c.latency_measure.warmup = 1
  c.latency_measure.runs = 3
  c.latency_measure.table_warmup = 1
  c.latency_measure.table_runs = 3
  c.latency_validation_archs = 3
  c.measure_pareto_max = 2
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("search")
  cfg = _config(root)
  wd_a, wd_b = str(root / "a"), str(root / "b")
  # The latency check's raw report (predictions and measurements are not written to the
  # workdir): recorded so the test can recompute the rho the search reports.
  reports = []
  validate = search_lib.latency_lib.validate_table

  def recording_validate(*a, **kw):
    reports.append(validate(*a, **kw))
    return reports[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(search_lib.latency_lib, "validate_table", recording_validate)
    res_a = search_lib.run_search(cfg, wd_a)
    # The same search, killed after generation 1 and resumed. The latency table is a
    # measurement, so the second workdir gets a copy of the first's (as a resumed run reuses
    # its own).
    os.makedirs(wd_b)
    shutil.copy(os.path.join(wd_a, "latency_table.json"), wd_b)
    assert search_lib.run_search(cfg, wd_b, max_generations_this_run=1) is None
    rows_killed = [json.loads(l) for l in open(os.path.join(wd_b, "metrics.jsonl"))]
    res_b = search_lib.run_search(cfg, wd_b)
  return cfg, wd_a, wd_b, res_a, res_b, rows_killed, reports


def _key(r):
  return (tuple(r["genome"]), r["error"], r["latency_ms"], r["macs"], r["params"])


def test_resume_gives_the_same_front(runs, capsys):
  cfg, wd_a, wd_b, res_a, res_b, rows_killed, _ = runs
  assert [r["step"] for r in rows_killed] == [0, 1]
  rows = [json.loads(l) for l in open(os.path.join(wd_b, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [0, 1, 2, 3]   # resumed at 2, nothing redone
  assert [_key(r) for r in res_a["pareto"]] == [_key(r) for r in res_b["pareto"]]
  assert res_a["num_evaluated"] == res_b["num_evaluated"]
  rows_a = [json.loads(l) for l in open(os.path.join(wd_a, "metrics.jsonl"))]
  assert [r["hypervolume"] for r in rows_a] == [r["hypervolume"] for r in rows]
  # A finished search is never overwritten; a changed config is refused.
  with pytest.raises(FileExistsError, match="finished"):
    search_lib.run_search(cfg, wd_a)
  cfg.num_generations = 4
  with pytest.raises(FileExistsError, match="num_generations"):
    search_lib.run_search(cfg, wd_a)
  cfg.num_generations = 3


def test_outputs_are_consistent(runs):
  cfg, wd_a, _, res, _, _, reports = runs
  for f in ("pareto.json", "pareto.csv", "pareto.png", "metrics.jsonl", "results.json",
            "latency_table.json", "config.json"):
    assert os.path.exists(os.path.join(wd_a, f)), f
  front = json.load(open(os.path.join(wd_a, "pareto.json")))["pareto"]
  assert front and front == res["pareto"]
  rows = list(csv.DictReader(open(os.path.join(wd_a, "pareto.csv"))))
  assert [list(map(int, r["genome"].split())) for r in rows] == [r["genome"] for r in front]
  assert [float(r["accuracy"]) for r in rows] == pytest.approx([r["accuracy"] for r in front])
  f = np.array([[r["error"], r["latency_ms"], r["macs"]] for r in front])
  for i in range(len(f)):   # brute force: no member of the front dominates another
    dom = np.all(f <= f[i], 1) & np.any(f < f[i], 1)
    assert not dom.any(), (i, f)
  from evonas_jax.space import get_space
  import dataclasses
  space = dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 2, 2, 1),
                              mlp_choices=(1.0, 4.0), expand_choices=(1.0, 2.0),
                              d_state_choices=(16, 32))
  for r in front:   # objectives agree with an independent recomputation from the genome
    arch = Arch.from_dict(r["arch"])
    assert space.decode(r["genome"]) == arch
    c = arch_cost(space, arch, (16, 16, 1), 10)
    assert (r["macs"], r["params"]) == (c.macs, c.params)
    assert r["error"] == pytest.approx(1 - r["accuracy"])
    # An accuracy is a count over the evaluator's 2 x 64 = 128 validation images (no padding),
    # so 128 * accuracy is an integer: averaging per batch or counting padded rows would not be.
    n = cfg.evaluator.num_eval_batches * cfg.evaluator.eval_batch_size
    assert 0 < r["accuracy"] * n == round(r["accuracy"] * n), r["accuracy"]
  measured = [r for r in front if "measured_latency_ms" in r]
  assert len(measured) == min(2, len(front)) and all(r["measured_latency_ms"] > 0 for r in measured)
  lut = res["latency_table"]
  assert lut["num_random_archs"] == 3
  # The reported rho is the rank correlation (scipy as the reference) of the saved table's
  # predictions on the seeded random archs with their measured latencies.
  from scipy import stats

  from evonas_jax.latency import LatencyTable
  rep = reports[0]                      # run a's check (run b's final check is reports[-1])
  saved = LatencyTable.load(os.path.join(wd_a, "latency_table.json"))
  seeded = [space.decode(g) for g in space.sample(cfg.seed, 3)]
  assert rep["predicted_ms"] == [saved.predict(a) for a in seeded]
  assert len(rep["measured_ms"]) == 3 and all(m > 0 for m in rep["measured_ms"])
  want = stats.spearmanr(rep["predicted_ms"], rep["measured_ms"]).statistic
  assert lut["spearman_rho_random"] == pytest.approx(want, abs=1e-12)
  metrics = [json.loads(l) for l in open(os.path.join(wd_a, "metrics.jsonl"))]
  assert len(metrics) == cfg.num_generations + 1
  assert all(m["hypervolume"] > 0 for m in metrics)
  # NSGA-II keeps the best, so the population's best error never gets worse.
  best = [m["best_error"] for m in metrics]
  assert all(b <= a + 1e-9 for a, b in zip(best, best[1:])), best
  assert metrics[-1]["evaluated"] + metrics[-1]["cache_hits"] >= cfg.population_size * 4


@pytest.mark.parametrize("field,value,match", [
    ("objectives", "error,flops", r"config.objectives='error,flops'.*allowed values.*'latency'"),
    ("latency", "fast", r"config.latency='fast' is not one of \('lut', 'measured', 'none'\)"),
    ("evaluator.kind", "serial", r"config.evaluator.kind='serial'.*'dmmpe'"),
    ("evaluator.split", "test", r"config.evaluator.split='test'.*never the test split"),
    ("population_size", 1, r"config.population_size=1"),
])
def test_bad_config_fields(tmp_path, field, value, match):
  cfg = _config(tmp_path)
  node = cfg
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with cfg.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=match):
    search_lib.run_search(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")   # failed before touching the workdir
