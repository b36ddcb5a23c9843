"""metrics.jsonl and the TensorBoard events hold each step once after a crash and a resume.

A real tiny training (the CLI, in subprocesses sharing a persistent compile cache so the resumed
run loads what the first compiled) runs 4 steps with checkpoints at 2 and 4. What a crash after
step 4's rows but before its checkpoint committed leaves is then made: checkpoint 4, final/ and
results.json removed, a line torn mid-write appended. Rerunning the same command resumes from
step 2; every step's rows must then appear exactly once, the rows up to step 2 byte-identical,
the redone rows equal (resume is deterministic) to the ones the crash left, and TensorBoard's
scalars equal to metrics.jsonl, one value per step. results.json carries the provenance.
"""
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

from test_tensorboard import scalars_of

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _train(wd, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")   # as conftest: compile time dominates
  env.pop("EVONAS_JAX_COMPILE_CACHE", None)
  args = [sys.executable, "-m", "evonas_jax.train", "--config", "configs/ci_tiny.py",
          "--workdir", str(wd), f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
          f"--config.compile_cache_dir={tmp_path / 'xla'}",
          "--config.num_steps=4", "--config.log_every=1", "--config.checkpoint_every=2",
          "--config.eval_every=100", "--config.parallel.num_devices=1",
          # No BN calibration, one evaluation batch per split: about half the compiles.
          "--config.bn_calibration_batches=0", "--config.eval_batch_size=400",
          "--config.pst.stages=('maxnet',)"]
  r = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout


def test_resume_keeps_each_step_once(tmp_path):
  wd = tmp_path / "run"
  _train(wd, tmp_path)
  path = wd / "metrics.jsonl"
  full = path.read_text().splitlines(keepends=True)
  full_rows = [json.loads(x) for x in full]
  assert sorted(r["step"] for r in full_rows if "loss" in r) == [1, 2, 3, 4]

  # The crash: checkpoint 4 never committed, nothing final written, a torn last line.
  assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]
  shutil.rmtree(wd / "checkpoints" / "4")
  shutil.rmtree(wd / "final")
  os.remove(wd / "results.json")
  with open(path, "a") as f:
    f.write('{"step": 4, "loss": 2.3')
  out = _train(wd, tmp_path)
  assert "resuming" in out and "from step 2" in out
  assert "dropped" in out and "torn line" in out

  lines = path.read_text().splitlines(keepends=True)
  rows = [json.loads(x) for x in lines]
  # Each (step, kind of row) exactly once, the same sequence as the uninterrupted run.
  sig = [(r["step"], tuple(sorted(k for k in r if k != "time"))) for r in rows]
  assert sig == [(r["step"], tuple(sorted(k for k in r if k != "time"))) for r in full_rows]
  assert len(set(sig)) == len(sig)
  train_steps = [r["step"] for r in rows if "loss" in r]
  assert train_steps == [1, 2, 3, 4]
  # Rows up to the checkpoint are the very same lines; the redone ones reproduce the values.
  n_kept = sum(1 for r in full_rows if r["step"] <= 2)
  assert lines[:n_kept] == full[:n_kept]
  for new, old in zip(rows[n_kept:], full_rows[n_kept:]):
    assert new["time"] > old["time"]
    for k in ("loss", "lr", "val_acc_largest", "val_acc_smallest"):
      if k in old:
        assert new[k] == pytest.approx(old[k], rel=1e-5, abs=1e-6), (new["step"], k)

  # TensorBoard: one value per step and tag, equal to metrics.jsonl (float32).
  sc = scalars_of(str(wd / "tensorboard" / "supernet"))
  assert sorted(sc["train/loss"]) == [1, 2, 3, 4]
  for r in rows:
    for k, v in r.items():
      if k in ("step", "time"):
        continue
      tag = ("eval/" if k.startswith(("val_", "test_")) else "train/") + k
      assert sc[tag][r["step"]] == [pytest.approx(v, rel=1e-6)], (tag, r["step"])
  assert sum(len(s) for series in sc.values() for s in series.values()) == sum(
      len(r) - 2 for r in rows)

  prov = json.loads((wd / "results.json").read_text())["provenance"]
  assert prov["packages"]["jax"] == metadata.version("jax")
  assert prov["packages"]["orbax-checkpoint"] == metadata.version("orbax-checkpoint")
  assert prov["devices"]["platform"] == "cpu" and prov["devices"]["count"] == 1
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
  assert prov["git"] == (None if head.returncode else
                         {"commit": head.stdout.strip(), "dirty": prov["git"]["dirty"]})
