"""metrics.jsonl and the TensorBoard events hold each step once after a crash and a resume.

A real tiny training (the CLI, in subprocesses sharing a persistent compile cache so the resumed
run loads what the first compiled) runs 4 steps with checkpoints at 2 and 4. What a crash after
step 4's rows but before its checkpoint committed leaves is then made: checkpoint 4, final/ and
results.json removed, a line torn mid-write appended. Rerunning the same command resumes from
step 2; every step's rows must then appear exactly once, the rows up to step 2 byte-identical,
the redone rows equal (resume is deterministic) to the ones the crash left, and TensorBoard's
scalars equal to metrics.jsonl, one value per step. results.json carries the provenance.

The same command is also killed for real (SIGKILL to its process group, as `kill -9` or a dead
node does): once while an asynchronous checkpoint write is in flight (its orbax temporary folder
exists), once right after a checkpoint committed (mid-step), then rerun to the end. The final
variables must equal the uninterrupted run's bit for bit, and metrics.jsonl hold the same losses,
each step once. Both kill triggers are states of the workdir, not moments, so they do not depend
on how loaded the machine is.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata

import pytest

from test_tensorboard import scalars_of

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _command(wd, root):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")   # as conftest: compile time dominates
  env.pop("EVONAS_JAX_COMPILE_CACHE", None)
  args = [sys.executable, "-m", "evonas_jax.train", "--config", "configs/ci_tiny.py",
          "--workdir", str(wd), f"--config.data.tfds_data_dir={root / 'tfds'}",
          f"--config.compile_cache_dir={root / 'xla'}",
          "--config.num_steps=4", "--config.log_every=1", "--config.checkpoint_every=2",
          "--config.eval_every=100", "--config.parallel.num_devices=1",
          # No BN calibration, one evaluation batch per split: about half the compiles.
          "--config.bn_calibration_batches=0", "--config.eval_batch_size=400",
          "--config.pst.stages=('maxnet',)"]
  return args, env


def _train(wd, root):
  args, env = _command(wd, root)
  r = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(root, workdir) of one uninterrupted 4-step run; tests copy it rather than change it."""
  root = tmp_path_factory.mktemp("metrics_resume")
  _train(root / "reference", root)
  return root, root / "reference"


def test_resume_keeps_each_step_once(uninterrupted, tmp_path):
  root, ref = uninterrupted
  wd = tmp_path / "run"
  shutil.copytree(ref, wd)
  tmp_path = root          # the fixture's dataset and compile cache
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


def _writing(wd):
  """An orbax temporary checkpoint folder exists: a checkpoint write is in flight."""
  return bool(glob.glob(os.path.join(wd, "checkpoints", "*orbax-checkpoint-tmp*")))


def _launch_until(wd, root, trigger, log):
  """Runs the training command in its own process group and SIGKILLs the whole group the first
  time `trigger()` holds (polled every 2 ms). Returns True when it was killed, False when the
  run ended first (then its exit status must be 0)."""
  args, env = _command(wd, root)
  with open(log, "ab") as f:
    p = subprocess.Popen(args, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True)
    t0 = time.time()
    while p.poll() is None:
      if trigger():
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return True
      if time.time() - t0 > 900:
        os.killpg(p.pid, signal.SIGKILL)
        raise TimeoutError(f"training ran past 900 s; see {log}")
      time.sleep(0.002)
  assert p.returncode == 0, open(log).read()[-4000:]
  return False


def _leaves(path):
  import jax
  import numpy as np

  from evonas_jax.checkpoint import load_pytree
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(load_pytree(str(path)))[0]}


def _losses(wd):
  rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_sigkill_during_a_checkpoint_write_and_mid_step_then_rerun_equals_uninterrupted(
    uninterrupted, tmp_path):
  import numpy as np
  root, ref = uninterrupted
  wd, log = tmp_path / "killed", tmp_path / "launches.log"
  # 1: killed while the first asynchronous checkpoint write is in flight (tmp folder present).
  assert _launch_until(wd, root, lambda: _writing(wd), log), "no checkpoint write was seen"
  # 2: the rerun is killed as soon as checkpoint 2 has committed (orbax renames the temporary
  # folder "2.orbax-checkpoint-tmp" to "2"): it is then computing step 3 or writing step 4.
  committed = lambda: os.path.isdir(wd / "checkpoints" / "2")
  assert _launch_until(wd, root, committed, log), "the rerun ended before a checkpoint committed"
  assert not (wd / "results.json").exists()
  # 3: the same command once more runs to the end, resuming from a committed checkpoint.
  assert not _launch_until(wd, root, lambda: False, log)
  assert re.search(r"resuming \S+ from step [24] ", log.read_text()), log.read_text()[-3000:]

  want, got = _leaves(ref / "final"), _leaves(wd / "final")
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)   # bitwise: same programs, CPU
  assert _losses(wd) == _losses(ref) and [s for s, _ in _losses(wd)] == [1, 2, 3, 4]
  res = lambda d: {n: {k: v for k, v in s.items() if k.startswith(("val_", "test_"))}
                   for n, s in json.loads((d / "results.json").read_text())["subnets"].items()}
  assert res(wd) == res(ref)
