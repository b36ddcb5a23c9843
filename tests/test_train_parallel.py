"""CA-DDKD supernet step: an 8-device shard_map step equals the 1-device step on the same batch.

Covers the whole loss (teacher KD, spatial + frequency projectors with BatchNorm, k=2 subnets,
student BatchNorm): gradients are all-reduced over `data` and BN statistics synchronised, so the
result must not depend on how the global batch is split.

The optimizer here is plain SGD: some parameters have a mathematically zero gradient (e.g. the
frequency projector's output bias: a constant shift is removed by the mean-centring), and Adam
turns the float noise of such a gradient into a full +-lr step whose sign depends on the
reduction order. SGD applies the all-reduced gradients as they are, so the test checks the
data-parallel machinery itself (the optimizer is the same code on both meshes).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evonas_jax import data as data_lib
from evonas_jax import parallel
from evonas_jax.nn.teacher import teacher_from_config
from evonas_jax.pst import PSTSchedule, sample_step_genomes
from evonas_jax.space import get_space
from helpers import load_config, use_digits
from evonas_jax.trainer import make_supernet_trainer


def small_config(tmp_path):
  c = use_digits(load_config("ci_tiny"), tmp_path)
  c.batch_size = 16
  c.pst.enabled = False
  c.pst.k_max = 2
  return c


def test_8_device_step_equals_1_device_step(tmp_path):
  c = small_config(tmp_path)
  space = get_space("evonas", "tiny")
  info = data_lib.dataset_info(c.data)
  teacher = teacher_from_config(c.teacher.model, info.num_classes)
  x0 = jnp.zeros((1, *info.image_shape))
  t_vars = jax.jit(functools.partial(teacher.init, train=False))(jax.random.key(5), x0)
  it = data_lib.train_iterator(c.data, c.batch_size, seed=0)
  batches = [next(it)]
  schedule = PSTSchedule(c.num_steps, enabled=False, k_max=2)
  genomes = [sample_step_genomes(space, schedule, 0, 0)]
  assert genomes[0].shape[0] == 2
  out = {}
  for n in (1, 8):
    mesh = parallel.make_data_mesh(n)
    step_fn, state, _ = make_supernet_trainer(c, space, info, schedule, teacher,
                                              parallel.replicate(mesh, t_vars), mesh,
                                              jax.random.key(0), tx=optax.sgd(0.01))
    # At the default init the attention over the 4 student tokens is almost uniform, so every
    # teacher cell gets nearly the same projection and the mean-centred (frequency) map is a
    # small difference of large numbers: float32 rounding in any reduction order shows up at
    # 2e-5 relative. Sharper queries make the comparison well conditioned.
    p = state["params"]
    for name in ("proj_spatial", "proj_frequency"):
      p[name] = dict(p[name], queries=p[name]["queries"] * 50.0)
    if n == 1:
      init_params = parallel.to_host(state["params"])
    metrics = []
    for s in range(1):
      b = parallel.shard_batch(mesh, {"image": batches[s]["image"], "label": batches[s]["label"]})
      state, m = step_fn(state, parallel.replicate(mesh, t_vars), b,
                         genomes[s], jax.random.key(s))
      metrics.append(parallel.to_host(m))
    out[n] = (parallel.to_host(state), metrics)
  (s1, m1), (s8, m8) = out[1], out[8]
  flat1 = jax.tree_util.tree_flatten_with_path(s1)[0]
  flat8 = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(s8)[0])
  diffs = {}
  for p, v in flat1:
    w = flat8[jax.tree_util.keystr(p)]
    if np.issubdtype(np.asarray(v).dtype, np.floating):
      diffs[jax.tree_util.keystr(p)] = float(np.max(np.abs(np.asarray(v) - np.asarray(w))))
  worst = max(diffs.values())
  assert worst < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:8]
  for k in ("ce", "kd", "spatial", "frequency", "loss", "grad_norm"):
    np.testing.assert_allclose(m8[0][k], m1[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert m1[0][k] > 0, k       # every loss term is live
  # The state really moved (the comparison is not between two untouched inits).
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       s1["params"], init_params)
  assert max(jax.tree.leaves(moved)) > 1e-3
