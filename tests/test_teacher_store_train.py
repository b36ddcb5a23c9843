"""Training from precomputed teacher outputs (teacher.source="store") equals running the teacher.

The store is computed from the same Flax teacher (unaugmented images); one supernet step on the
same batch must give the same losses and parameters either way. Augmented data is refused.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_config, use_digits

from evonas_jax import data as data_lib
from evonas_jax import parallel
from evonas_jax.nn.teacher import teacher_from_config
from evonas_jax.pst import PSTSchedule, sample_step_genomes
from evonas_jax.space import get_space
from evonas_jax.teacher_store import compute_store
from evonas_jax.trainer import add_store_outputs, make_supernet_trainer, open_teacher_store


def test_store_step_equals_online_teacher_step(tmp_path):
  c = use_digits(load_config("ci_tiny"), tmp_path)
  c.data.crop_padding, c.data.random_flip = 0, False
  c.batch_size = 16
  space = get_space(c.space, c.preset)
  info = data_lib.dataset_info(c.data)
  teacher = teacher_from_config(c.teacher.model, info.num_classes)
  t_vars = jax.jit(functools.partial(teacher.init, train=False))(
      jax.random.key(5), jnp.zeros((1, *info.image_shape)))
  path = str(tmp_path / "store")
  compute_store(lambda v, x: teacher.apply(v, x), t_vars, c.data, path, batch_size=256,
                progress=False)
  cs = c.copy_and_resolve_references()
  cs.teacher.source, cs.teacher.store = "store", path
  store = open_teacher_store(cs)

  batch = next(data_lib.train_iterator(c.data, c.batch_size, seed=0, return_index=True))
  schedule = PSTSchedule(4, enabled=False, k_max=1)
  genomes = sample_step_genomes(space, schedule, 0, 0)
  mesh = parallel.make_data_mesh(1)
  results = []
  for cfg, tch, tv, st, b in (
      (c, teacher, parallel.replicate(mesh, t_vars), None,
       {"image": batch["image"], "label": batch["label"]}),
      (cs, None, None, store, {k: v for k, v in add_store_outputs(store, batch).items()
                               if k != "index"})):
    step_fn, state, _ = make_supernet_trainer(cfg, space, info, schedule, tch, tv, mesh,
                                              jax.random.key(0), tx=optax.sgd(0.01), store=st)
    # Well-conditioned projections (as in test_train_parallel): near-uniform attention at init
    # makes the mean-centred frequency map a tiny difference of large numbers.
    for name in ("proj_spatial", "proj_frequency"):
      state["params"][name] = dict(state["params"][name],
                                   queries=state["params"][name]["queries"] * 50.0)
    state, m = step_fn(state, tv if tv is not None else {}, parallel.shard_batch(mesh, b),
                       genomes, jax.random.key(1))
    results.append((parallel.to_host(state["params"]), parallel.to_host(m)))
  (p_online, m_online), (p_store, m_store) = results
  for k in ("ce", "kd", "spatial", "frequency", "loss"):
    np.testing.assert_allclose(m_store[k], m_online[k], rtol=1e-5, err_msg=k)
    assert m_online[k] > 0, k
  flat = jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p_store, p_online))[0]
  worst = sorted(((v, jax.tree_util.keystr(k)) for k, v in flat), reverse=True)[:5]
  assert worst[0][0] < 1e-5, worst

  # Stored features are of unaugmented images: augmentation is refused, naming the fields.
  cs.data.crop_padding = 2
  with pytest.raises(ValueError, match="crop_padding"):
    open_teacher_store(cs)
