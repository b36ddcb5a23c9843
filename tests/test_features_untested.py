"""Features that no other test ran (project issue 17): compute_dtype="bfloat16", init_from,
teacher.source="checkpoint", drop_path_rate > 0 in train mode (masked vs sliced), and the
launch/slurm.sbatch command line.

Cost: compile time dominates, so the trainer tests share one module fixture on a reduced space
(one block per stage, two MLP widths) and run one subnet step per dtype; the drop-path test
builds its variables from `jax.eval_shape` (no init compile) on a reduced hybrid space.
"""
import dataclasses
import functools
import os
import shlex
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, load_config

from evonas_jax import data as data_lib
from evonas_jax import parallel, trainer
from evonas_jax.checkpoint import TrainCheckpointer, save_pytree
from evonas_jax.pst import PSTSchedule
from evonas_jax.space import Arch, get_space
from evonas_jax.workdir import MetricWriter

# One block per stage and only the MLP ratio elastic: the smallest supernet the trainer builds.
SPACE = dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 1, 1, 1),
                            mlp_choices=(1.0, 2.0), expand_choices=(1.0,), d_state_choices=(16,))
ARCH = Arch(mlp_ratio=(2.0, 1.0, 2.0, 1.0), d_state=(16,) * 4, expand=(1.0, 1.0, 1.0, 2.0),
            depth=((1,), (1,), (1,), (1,)), block_type=("vssd", "vssd", "vssd", "attention"))


def _flat(tree):
  """{path: numpy leaf} of a pytree."""
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _config(root):
  """ci_tiny (digits 16x16, a 1-block ViT teacher, CA-DDKD with both projectors) at batch 16."""
  c = load_config("ci_tiny")
  c.data.tfds_data_dir = str(root / "tfds")
  c.batch_size = 16
  c.teacher.source = "train"
  c.teacher.num_steps = c.teacher.eval_every = 1
  c.optimizer.warmup_steps = 0       # the first step's lr is the peak lr, not 0
  c.compile_cache_dir = "none"
  c.tensorboard = False
  c.parallel.num_devices = 1
  return c


def _writer(workdir):
  os.makedirs(workdir, exist_ok=True)
  return MetricWriter(workdir, tensorboard=False, run="supernet", streams={"teacher": "teacher_"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A source run (teacher stage, then one fp32 supernet step written out as the trainer writes
  its outputs), the same step in bfloat16 from the same initial state, and a second run that
  starts from the source with init_from and teacher.source="checkpoint"."""
  root = tmp_path_factory.mktemp("features")
  c = _config(root)
  src = str(root / "src")
  mesh = parallel.make_data_mesh(1)
  info = data_lib.dataset_info(c.data)
  teacher, saved_teacher = trainer.train_teacher(c, src, mesh, info, _writer(src))
  schedule = PSTSchedule(c.num_steps, enabled=False, k_max=1)
  batch = next(data_lib.train_iterator(c.data, c.batch_size, seed=0))
  batch = parallel.shard_batch(mesh, {"image": batch["image"], "label": batch["label"]})
  genomes = np.asarray(SPACE.encode(ARCH), np.int32)[None]                       # (1, G)
  steps = {}
  for dtype in ("float32", "bfloat16"):
    c.compute_dtype = dtype
    step_fn, state, _ = trainer.make_supernet_trainer(c, SPACE, info, schedule, teacher,
                                                      saved_teacher, mesh, jax.random.key(0))
    before = jax.device_get(state)              # the step donates its input state
    new, metrics = step_fn(state, saved_teacher, batch, genomes, jax.random.key(1))
    steps[dtype] = (before, jax.device_get(new), jax.device_get(metrics))
  # The source run's outputs after its (fp32) step, written as train_and_evaluate writes them:
  # final/ = the student variables, checkpoints/<step>/ = the whole train state (projectors too).
  trained = steps["float32"][1]
  save_pytree(os.path.join(src, "final"), {"params": trained["params"]["student"],
                                           "batch_stats": trained["batch_stats"]["student"]})
  ck = TrainCheckpointer(os.path.join(src, "checkpoints"), keep=2, async_save=False)
  ck.save(1, parallel.replicate(mesh, trained), {"step": 1})
  ck.close()

  c2 = _config(root)
  c2.teacher.source = "checkpoint"
  c2.teacher.checkpoint = os.path.join(src, "teacher", "final")
  c2.init_from = src
  second = str(root / "second")
  teacher2, loaded_teacher = trainer.train_teacher(c2, second, mesh, info, _writer(second))
  step2, state2, _ = trainer.make_supernet_trainer(c2, SPACE, info, schedule, teacher2,
                                                   loaded_teacher, mesh, jax.random.key(0))
  aux = jax.device_get(step2._prologue(loaded_teacher, batch))   # the student run's teacher
  x0 = jnp.zeros((1, *info.image_shape), jnp.float32)
  fresh_teacher = jax.jit(functools.partial(teacher.init, train=False))(
      jax.random.key(c.seed + 7), x0)               # what train_teacher initialises
  return dict(steps=steps, src=src, second=second, teacher=teacher, batch=batch,
              saved_teacher=jax.device_get(saved_teacher),
              loaded_teacher=jax.device_get(loaded_teacher), fresh_teacher=fresh_teacher,
              state2=jax.device_get(state2), aux=aux)


# ------------------------------------------------------------------------------------- bfloat16

def test_bfloat16_step_keeps_fp32_params_and_matches_the_fp32_loss(runs):
  """One CA-DDKD step (teacher KD + spatial + frequency projectors) of the same subnet from the
  same state, in float32 and in bfloat16 compute, on the default (compiled) engine.

  Bounds from bfloat16's 8 significant bits, unit roundoff u = 2^-8 = 3.9e-3. Each logged term
  (loss, CE, KD, spatial, frequency) is a float32 reduction of bf16 activations: every
  activation carries a relative error of a few u, and a mean over thousands of them cancels
  most of it, so 2u = 7.8e-3 relative is generous (measured: 1.5e-4 to 6.4e-4). The gradient
  norm comes from the bf16 backward, about twice the roundings of the forward and a norm
  dominated by few large entries: 8u = 3.1e-2 (measured 6.4e-3). A bf16 computation whose
  signal is below bf16 resolution fails by orders of magnitude: the frequency projector did
  (loss 16.0 vs 31.9, gradient norm 9e10 vs 25) until supernet_loss ran the projectors in
  float32. Bitwise-equal losses would mean bf16 was never used (the fp32 programs are
  deterministic on CPU)."""
  (b32, n32, m32), (b16, n16, m16) = runs["steps"]["float32"], runs["steps"]["bfloat16"]
  # Same initial state (same seed), so the comparison is of the step alone.
  f32, f16 = _flat(b32), _flat(b16)
  assert f32.keys() == f16.keys()
  for k in f32:
    np.testing.assert_array_equal(f16[k], f32[k], err_msg=k)
  # Master params, batch statistics and the optimizer state stay float32 under bf16 compute.
  for k, v in _flat(n16).items():
    if np.issubdtype(v.dtype, np.floating):
      assert v.dtype == np.float32, (k, v.dtype)
  # The step was applied (AdamW moves every weight with a non-zero gradient).
  moved = [k for k, v in _flat(n16["params"]).items() if not np.array_equal(v, f16["['params']" + k])]
  assert len(moved) > 0.5 * len(_flat(n16["params"])), len(moved)
  u = 2.0 ** -8
  for k, bound in (("loss", 2 * u), ("ce", 2 * u), ("kd", 2 * u), ("spatial", 2 * u),
                   ("frequency", 2 * u), ("grad_norm", 8 * u)):   # grad_norm: before clipping
    rel = abs(float(m16[k]) - float(m32[k])) / abs(float(m32[k]))
    print(f"bf16 vs fp32 {k}: {float(m16[k]):.6g} vs {float(m32[k]):.6g} (rel {rel:.2e})")
    assert rel <= bound, (k, float(m16[k]), float(m32[k]))
  assert float(m16["loss"]) != float(m32["loss"])


# ------------------------------------------------------------------------- init_from / teacher

def test_init_from_starts_from_the_source_runs_weights(runs):
  """The second run's step-0 state is the source run's: the student's params and BatchNorm
  statistics bit-equal to its final/, the CA-DDKD projectors (params and BatchNorm statistics)
  to its last train checkpoint. The source moved away from the shared fresh initialisation (one
  AdamW step), so a silently ignored init_from would fail."""
  before, trained, _ = runs["steps"]["float32"]
  got, want, fresh = _flat(runs["state2"]), _flat(trained), _flat(before)
  for part in ("params", "batch_stats"):
    keys = [k for k in want if k.startswith(f"['{part}']")]
    assert {k for k in got if k.startswith(f"['{part}']")} == set(keys)
    assert any("proj_spatial" in k for k in keys) and any("proj_frequency" in k for k in keys)
    for k in keys:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  changed = [k for k in want if k.startswith("['params']") and not np.array_equal(want[k], fresh[k])]
  assert any("student" in k for k in changed) and any("proj_" in k for k in changed)


def test_teacher_checkpoint_is_the_saved_teacher(runs):
  """teacher.source="checkpoint": the second run trains no teacher, loads the variables the
  source's teacher stage saved, and the student step's teacher outputs (its prologue: logits
  and the distilled feature) equal the saved teacher's own forward, computed here directly."""
  assert not os.path.exists(os.path.join(runs["second"], "teacher"))
  saved, loaded = _flat(runs["saved_teacher"]), _flat(runs["loaded_teacher"])
  assert saved.keys() == loaded.keys()
  for k in saved:
    np.testing.assert_array_equal(loaded[k], saved[k], err_msg=k)
  images = jax.device_get(runs["batch"]["image"])
  apply = jax.jit(functools.partial(runs["teacher"].apply, train=False))
  logits, feat = apply(runs["saved_teacher"], images)
  np.testing.assert_allclose(runs["aux"][0], logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(runs["aux"][1], feat, rtol=1e-6, atol=1e-6)
  # Non-vacuous: the freshly initialised teacher (what a failed load would leave) differs.
  fresh_logits, _ = apply(runs["fresh_teacher"], images)
  assert float(jnp.abs(fresh_logits - logits).max()) > 1e-3


# ------------------------------------------------------------------------------------ drop path

def test_drop_path_train_mode_masked_equals_sliced():
  """drop_path_rate > 0, train mode (stochastic depth on, BatchNorm on batch statistics): the
  masked supernet and the standalone subnet give the same logits and BatchNorm statistics under
  the same dropout key. That holds because a block's drop rate and its dropout stream are tied
  to its supernet position (rate * position / (blocks - 1); flax folds the module name
  stage<s>_block<i> into the key), so the arch skips stage 1's block 0 to make the standalone
  block 1 keep index 1. The standalone variables are copied by hand (tests/hand_slice.py).

  Shapes: images (8, 16, 16, 1), logits (8, 10). Tolerance 1e-5: float32 summation order of
  full-width-and-masked vs sliced matmuls on values of order 1."""
  from hand_slice import fill_standalone

  from evonas_jax.nn.supernet import EvoNet, subnet_model, supernet_spec
  from evonas_jax.space import arch_masks
  space = dataclasses.replace(get_space("hybrid", "tiny"), max_depths=(1, 2, 1, 1),
                              mlp_choices=(1.0, 2.0), expand_choices=(1.0, 2.0),
                              d_state_choices=(8, 16))
  arch = Arch(mlp_ratio=(2.0, 1.0, 2.0, 1.0), d_state=(8, 16, 16, 16),
              expand=(1.0, 2.0, 1.0, 2.0), depth=((1,), (0, 1), (1,), (1,)),
              block_type=("ss2d", "vssd", "attention", "ss2d"))
  rate = 0.5          # per position 0, .125, .25, .375, .5: stage 1's block 1 drops at 0.25
  model = EvoNet(supernet_spec(space, rate), 10)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 1))
  masks = arch_masks(space, arch)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, masks)
  # Random values instead of an init (no compile); variances positive for the BatchNorms.
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  v["batch_stats"] = jax.tree.map(np.abs, v["batch_stats"])
  train = lambda net: jax.jit(lambda v, x, k: net.apply(
      v, x, *([masks] if net is model else []), train=True, rngs={"dropout": k},
      mutable=["batch_stats"]))
  masked = train(model)
  net = subnet_model(space, arch, 10, drop_path_rate=rate)
  standalone = fill_standalone(jax.eval_shape(net.init, jax.random.key(0), x), v, space, arch)
  key = jax.random.key(3)
  a, a_bs = masked(v, x, key)
  b, b_bs = train(net)(standalone, x, key)
  assert np.isfinite(np.asarray(a)).all() and float(jnp.abs(a).max()) > 0.1
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=0), a_bs, b_bs)
  # Non-vacuous: another key drops other samples' branches, so stochastic depth is live.
  c, _ = masked(v, x, jax.random.key(4))
  assert float(jnp.abs(a - c).max()) > 1e-3


# --------------------------------------------------------------------------------- slurm.sbatch

def _sbatch(tmp_path, env_extra, *args):
  """Runs launch/slurm.sbatch under bash with a fake SLURM allocation and a fake `srun` on PATH
  that writes the argv it receives, one argument per line, to tmp_path/srun_argv."""
  fake = tmp_path / "bin"
  fake.mkdir(exist_ok=True)
  (fake / "srun").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/srun_argv\n')
  (fake / "srun").chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "PYTHON"}
  env.update(PATH=f"{fake}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="4",
             SLURM_JOB_NODELIST="gpu[01-04]", SLURM_NTASKS="4")
  env.update(env_extra)
  return subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


def test_slurm_sbatch_dry_run_prints_the_srun_command(tmp_path):
  """DRY_RUN=1 prints the allocation and the exact srun command (shell-quoted) and runs nothing;
  without it the same argv reaches srun (a fake one here). Overrides pass through verbatim,
  including one with a space."""
  args = ("configs/imagenet.py", "workdirs/in 1k", "--config.batch_size=256",
          "--config.data.source=imagenet2012")
  want = ["srun", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "evonas_jax.train",
          "--config", "configs/imagenet.py", "--workdir", "workdirs/in 1k",
          "--config.batch_size=256", "--config.data.source=imagenet2012"]
  r = _sbatch(tmp_path, {"DRY_RUN": "1"}, *args)
  assert r.returncode == 0, r.stderr
  assert not (tmp_path / "srun_argv").exists()
  lines = r.stdout.splitlines()
  assert lines[0] == "[slurm.sbatch] job 4242: 4 node(s) gpu[01-04], 4 task(s)", lines
  assert shlex.split(lines[-1]) == want, lines[-1]
  r = _sbatch(tmp_path, {"PYTHON": "/opt/py/bin/python"}, *args)
  assert r.returncode == 0, r.stderr
  got = (tmp_path / "srun_argv").read_text().splitlines()
  assert got == [w if w != ".venv/bin/python" else "/opt/py/bin/python" for w in want[1:]]
  # One task per node is what the script asks for: a different allocation is refused.
  r = _sbatch(tmp_path, {"DRY_RUN": "1", "SLURM_NTASKS": "32"}, *args)
  assert r.returncode == 2 and "one task per node" in r.stderr, r.stderr
  r = _sbatch(tmp_path, {"DRY_RUN": "1"}, "configs/imagenet.py")
  assert r.returncode != 0 and "usage: sbatch launch/slurm.sbatch CONFIG WORKDIR" in r.stderr
