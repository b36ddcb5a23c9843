"""DMMPE vs the data-parallel baseline vs a plain single-device evaluation.

Tiny preset with fewer supernet blocks per stage (1, 2, 2, 1) and 16x16 inputs: the engine is
what is under test, and compile time on 2 CPU cores scales with the number of blocks.
"""
import dataclasses

import jax
import numpy as np
import pytest

from evonas_jax import dmmpe, parallel_pool
from evonas_jax.nn import init_supernet
from evonas_jax.space import genome_to_masks, get_space
from evonas_jax.supernet_train import make_bn_step, make_eval_step, recalibrate_bn

H = 16


@pytest.fixture(scope="module")
def setup():
  space = dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 2, 2, 1))
  model, variables = init_supernet(space, 10, jax.random.key(0), (H, H, 1))
  rng = np.random.default_rng(0)
  # Labels from a fixed random linear map of the image, so accuracies are spread (not all ~0.1).
  images = rng.normal(size=(2, 32, H, H, 1)).astype(np.float32)
  w = rng.normal(size=(H * H, 10))
  labels = np.argmax(images.reshape(2, 32, -1) @ w, -1)
  mask = np.ones((2, 32), np.float32)
  mask[1, 28:] = 0   # a padded last batch
  data = dmmpe.EvalData(rng.normal(size=(2, 16, H, H, 1)) * 1.5 + 0.3, images, labels, mask)
  return space, model, variables, data


def reference_accuracy(model, space, variables, data, genome, recalibrate=True):
  """Independent path: the trainer's recalibrate_bn + eval_step, one candidate, one device."""
  masks = genome_to_masks(space, genome)
  v = variables
  if recalibrate:
    v = recalibrate_bn(make_bn_step(model), variables, list(data.calib), masks)
  step = make_eval_step(model)
  correct = total = 0.0
  for im, lab, mk in zip(data.images, data.labels, data.mask):
    c, n = step(v, im, lab, mk, masks)
    correct, total = correct + float(c), total + float(n)
  return correct / total


@pytest.mark.parametrize("layout", ["submeshes", "pool"])
def test_dmmpe_equals_baseline_and_reference(setup, layout):
  space, model, variables, data = setup
  devs = jax.devices()[:4]
  base = space.sample(1, 5)
  # Duplicates inside the batch and 7 candidates for groups of 4 (submeshes) or 8 (pool).
  genomes = np.concatenate([base, base[[1, 3]]])
  dm = dmmpe.make_evaluator("dmmpe", model, variables, space, data=data, devices=devs,
                            devices_per_group=2, group_size=4, layout=layout)
  assert all(m.axis_names == ("candidate",) for m in dm.meshes)
  # pool: one mesh of all 4 devices taking both sub-meshes' groups at once (one executable).
  assert [m.size for m in dm.meshes] == ([2, 2] if layout == "submeshes" else [4])
  assert dm.group_size == (4 if layout == "submeshes" else 8)
  acc_dm = dm.evaluate(genomes)
  assert dm.stats["evaluated"] == 5 and dm.stats["cache_hits"] == 2
  dp = dmmpe.make_evaluator("data_parallel", model, variables, space, data=data, devices=devs)
  acc_dp = dp.evaluate(genomes)
  assert acc_dm.shape == (7,)
  np.testing.assert_allclose(acc_dm, acc_dp, atol=1e-6)
  np.testing.assert_array_equal(acc_dm[5:], acc_dm[[1, 3]])
  assert len(set(np.round(acc_dm[:5], 6))) > 1, acc_dm   # candidates really differ
  ref = reference_accuracy(model, space, variables, data, base[2])
  assert abs(acc_dm[2] - ref) < 1e-6, (acc_dm[2], ref)
  # Recalibration matters here (so the check above can fail): without it the numbers change.
  plain = [reference_accuracy(model, space, variables, data, g, False) for g in base]
  assert np.abs(np.array(plain) - acc_dm[:5]).max() > 1e-3, (plain, acc_dm)
  # A second call is served from the cache alone (same numbers, no new evaluation).
  again = dm.evaluate(genomes[::-1])
  np.testing.assert_array_equal(again, acc_dm[::-1])
  assert dm.stats["evaluated"] == 5 and dm.stats["cache_hits"] == 9
  assert set(dm.cache) == {g.astype(np.int32).tobytes() for g in base}


def test_bad_inputs(setup):
  space, model, variables, data = setup
  with pytest.raises(ValueError, match="kind='serial'.*dmmpe"):
    dmmpe.make_evaluator("serial", model, variables, space, data=data)
  with pytest.raises(ValueError, match="group_size=3.*devices_per_group=2"):
    dmmpe.make_evaluator("dmmpe", model, variables, space, data=data,
                         devices=jax.devices()[:4], devices_per_group=2, group_size=3)
  with pytest.raises(ValueError, match="devices_per_group=3.*allowed values: \\[1, 2, 4\\]"):
    parallel_pool.candidate_submeshes(jax.devices()[:4], 3)
  with pytest.raises(ValueError, match="layout='mesh'.*pool"):
    dmmpe.make_evaluator("dmmpe", model, variables, space, data=data, layout="mesh")
  with pytest.raises(ValueError, match="split='test'.*validation"):
    dmmpe.load_eval_data({}, split="test")
  dm = dmmpe.make_evaluator("dmmpe", model, variables, space, data=data,
                            devices=jax.devices()[:1], group_size=2)
  bad = space.sample(0, 1)
  bad[0, 0] = 99
  with pytest.raises(ValueError, match="mlp_ratio"):
    dm.evaluate(bad)


def test_engine_pool_equals_dmmpe(setup):
  """The compiled-engine pool (each candidate at its own widths, 2 sub-meshes of 2 devices,
  batches sharded within a sub-mesh) scores what the vmapped masked DMMPE scores, and the
  independent single-device reference."""
  space, model, variables, data = setup
  devs = jax.devices()[:4]
  genomes = np.concatenate([space.sample(1, 5), space.encode(space.smallest())[None]])
  dm = dmmpe.make_evaluator("dmmpe", model, variables, space, data=data, devices=devs,
                            devices_per_group=2, group_size=2)
  en = dmmpe.make_evaluator("engine", model, variables, space, data=data, devices=devs,
                            devices_per_group=2)
  assert len(en.meshes) == 2 and all(m.axis_names == ("data",) and m.size == 2
                                     for m in en.meshes)
  acc_dm, acc_en = dm.evaluate(genomes), en.evaluate(genomes)
  np.testing.assert_allclose(acc_en, acc_dm, atol=1e-6)
  ref = reference_accuracy(model, space, variables, data, genomes[-1])
  assert abs(acc_en[-1] - ref) < 1e-6, (acc_en[-1], ref)
  assert en.stats["evaluated"] == len({g.tobytes() for g in genomes.astype(np.int32)})
  with pytest.raises(ValueError, match="eval_batch_size=32 must be divisible by "
                                       "devices_per_group=3"):
    dmmpe.make_evaluator("engine", model, variables, space, data=data,
                         devices=jax.devices()[:6], devices_per_group=3)
