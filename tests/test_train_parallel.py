"""CA-DDKD supernet step: an 8-device shard_map step equals the 1-device step on the same batch.

Covers the whole loss (teacher KD, spatial + frequency projectors with BatchNorm, k=2 subnets,
student BatchNorm): gradients are all-reduced over `data` and BN statistics synchronised, so the
result must not depend on how the global batch is split.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax import data as data_lib
from evonas_jax import parallel
from evonas_jax.nn.teacher import teacher_from_config
from evonas_jax.pst import PSTSchedule, sample_step_genomes
from evonas_jax.space import get_space
from evonas_jax.train_config import default_config
from evonas_jax.trainer import make_supernet_trainer


def small_config(tmp_path):
  c = default_config()
  c.data.source = "digits"
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.val_size = 200
  c.data.image_size = 16
  c.data.mean, c.data.std = 0.3, 0.35
  c.batch_size = 16
  c.num_steps = 4
  c.teacher.model.update(dict(patch_size=4, dim=32, depth=1, heads=2, mlp_ratio=2.0))
  c.distill.projector.update(dict(num_heads=2, ffn_ratio=2))
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
  batches = [next(it) for _ in range(2)]
  schedule = PSTSchedule(c.num_steps, enabled=False, k_max=2)
  genomes = [sample_step_genomes(space, schedule, s, 0) for s in range(2)]
  assert genomes[0].shape[0] == 2
  out = {}
  for n in (1, 8):
    mesh = parallel.make_data_mesh(n)
    step_fn, state, _ = make_supernet_trainer(c, space, info, schedule, teacher,
                                              parallel.replicate(mesh, t_vars), mesh,
                                              jax.random.key(0))
    metrics = []
    for s in range(2):
      b = parallel.shard_batch(mesh, {"image": batches[s]["image"], "label": batches[s]["label"]})
      state, m = step_fn(state, parallel.replicate(mesh, t_vars), b,
                         parallel.replicate(mesh, genomes[s]), jax.random.key(s))
      metrics.append(parallel.to_host(m))
    out[n] = (parallel.to_host(state), metrics)
  (s1, m1), (s8, m8) = out[1], out[8]
  for k in ("ce", "kd", "spatial", "frequency", "total", "grad_norm"):
    np.testing.assert_allclose(m8[0][k], m1[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert m1[0][k] > 0, k       # every loss term is live
  flat1 = jax.tree_util.tree_flatten_with_path(s1)[0]
  flat8 = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(s8)[0])
  worst = 0.0
  for p, v in flat1:
    w = flat8[jax.tree_util.keystr(p)]
    if np.issubdtype(np.asarray(v).dtype, np.floating):
      worst = max(worst, float(np.max(np.abs(np.asarray(v) - np.asarray(w)))))
  assert worst < 1e-5, worst
  # The state really moved (the comparison is not between two untouched inits).
  assert m1[1]["total"] != m1[0]["total"]
