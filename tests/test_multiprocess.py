"""A 2-process local multi-host run (CPU, localhost coordinator) agrees with one process.

Both runs see a 2-device data mesh and the same global batches ("global_slice" data sharding):
the 2-process run has one device per process and all-reduces gradients over gloo. The subprocesses
get conftest's compiler setting (JAX_DISABLE_MOST_OPTIMIZATIONS) so both runs compile the same
programs. Adam's epsilon is raised to 1e-4 here: some parameters have a mathematically zero
gradient (the bias of a depthwise conv whose output reaches BatchNorm through a 1x1 grid), and
with eps 1e-8 Adam turns the float noise of that gradient into lr-sized steps whose size depends
on the reduction order (measured 5e-4 on that one leaf, every other leaf within 8e-7).
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import ROOT, load_config

from evonas_jax.checkpoint import load_pytree



@pytest.mark.timeout(1500)
def test_two_process_run_matches_single_process(tmp_path):
  tfds_dir = str(tmp_path / "tfds")
  multi = str(tmp_path / "multi")
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
  cmd = ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "1", "--",
         "--config", os.path.join(ROOT, "configs", "ci_tiny.py"), "--workdir", multi,
         f"--config.data.tfds_data_dir={tfds_dir}", "--config.num_steps=4", "--config.optimizer.eps=1e-4"]
  # Prepare the digits dataset once, single-process, so the two processes do not race on it.
  from evonas_jax import data as data_lib
  c = load_config("ci_tiny")
  c.data.tfds_data_dir = tfds_dir
  c.num_steps = 4
  c.optimizer.eps = 1e-4
  data_lib.dataset_info(c.data)
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
  logs = r.stdout + r.stderr + "".join(
      open(os.path.join(multi, f)).read() for f in os.listdir(multi) if f.endswith(".log"))
  assert r.returncode == 0, logs[-4000:]
  assert "over 2 process(es)" in logs

  from evonas_jax.trainer import train_and_evaluate
  c.parallel.num_devices = 2
  single = str(tmp_path / "single")
  train_and_evaluate(c, single)
  a, b = load_pytree(single), load_pytree(multi)
  fa = jax.tree_util.tree_flatten_with_path(a)[0]
  fb = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(b)[0]}
  assert len(fa) == len(fb)
  worst = max(float(np.max(np.abs(np.asarray(v) - np.asarray(fb[jax.tree_util.keystr(p)]))))
              for p, v in fa)
  assert worst < 1e-5, worst
