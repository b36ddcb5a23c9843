"""Reliability: kill/NaN -> resume equals the uninterrupted run; corrupt checkpoints fall back."""
import json
import os

import jax
import numpy as np
import pytest

from evonas_jax import data as data_lib
from evonas_jax import trainer as trainer_lib
from evonas_jax.checkpoint import TrainCheckpointer, load_pytree
from evonas_jax.loop import NonFiniteLossError
from helpers import load_config, use_digits


def _config(tmp_path):
  c = use_digits(load_config("ci_tiny"), tmp_path)
  c.log_every = 1
  c.checkpoint_every = 2               # the resume point (step 2) falls inside PST stage 0
  c.parallel.num_devices = 2
  c.parallel.data_sharding = "per_host"
  return c


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_nan_stops_cleanly_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
  c = _config(tmp_path)
  ref = trainer_lib.train_and_evaluate(c, str(tmp_path / "a"))

  # Run B: the 4th batch is poisoned with NaN -> training stops at step 4 with a clear message,
  # the update is not applied and only good checkpoints (step 2) exist.
  real = data_lib.train_iterator

  def poisoned(*a, **k):
    it = real(*a, **k)

    class Wrap:
      n = 0

      def __next__(self):
        b = next(it)
        Wrap.n += 1
        if Wrap.n == 4:
          b = dict(b, image=np.full_like(b["image"], np.nan))
        return b

      def get_state(self):
        return it.get_state()

      def set_state(self, s):
        it.set_state(s)
    return Wrap()
  # The trainer reads training batches through evonas_jax.data (via task_runtime).
  monkeypatch.setattr(data_lib, "train_iterator", poisoned)
  wd = str(tmp_path / "b")
  with pytest.raises(NonFiniteLossError, match="NaN/inf at step 4.*last good checkpoint"):
    trainer_lib.train_and_evaluate(c, wd)
  monkeypatch.setattr(data_lib, "train_iterator", real)
  ck = TrainCheckpointer(os.path.join(wd, "checkpoints"))
  assert ck.steps() == [2]
  ck.close()
  assert not os.path.exists(os.path.join(wd, "results.json"))

  # Rerunning the same command resumes from step 2 (mid PST stage 0) and ends where the
  # uninterrupted run ended: same params, same accuracies.
  res = trainer_lib.train_and_evaluate(c, wd)
  a, b = _leaves(load_pytree(str(tmp_path / "a"))), _leaves(load_pytree(wd))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
  assert res["subnets"]["largest"]["val_acc"] == ref["subnets"]["largest"]["val_acc"]
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert max(r["step"] for r in rows if "loss" in r) == 6


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  d = str(tmp_path / "ck")
  ck = TrainCheckpointer(d, keep=3, async_save=False)
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  for step in (1, 2):
    ck.save(step, {"w": tree["w"] * step}, {"step": step})
  ck.close()
  # Damage every data file of the newest checkpoint.
  newest = os.path.join(d, "2")
  n = 0
  for root, _, files in os.walk(newest):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
      n += 1
  assert n > 0
  ck = TrainCheckpointer(d, keep=3, async_save=False)
  state, meta, step = ck.restore_latest(tree)
  ck.close()
  assert step == 1 and meta["step"] == 1
  np.testing.assert_array_equal(np.asarray(state["w"]), tree["w"])
  assert "falling back" in capsys.readouterr().out


def test_bad_config_names_the_field(tmp_path):
  c = _config(tmp_path)
  c.sampling.rule = "sandwitch"
  with pytest.raises(ValueError, match=r"config.sampling.rule = 'sandwitch'.*uniform.*sandwich"):
    trainer_lib.train_and_evaluate(c, str(tmp_path / "x"))
  c = _config(tmp_path)
  c.teacher.source = "checkpoint"
  with pytest.raises(ValueError, match="teacher.checkpoint"):
    trainer_lib.train_and_evaluate(c, str(tmp_path / "y"))
