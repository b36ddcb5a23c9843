"""Exact per-subnet BatchNorm statistics (`evonas_jax.evaluate.bn`) against an independent
reference: the inputs of every BatchNorm layer of the *sliced* subnet, captured with
`flax.linen.intercept_methods` during train-mode forwards over the same calibration images,
pooled in float64 numpy (mean and biased variance over every image and pixel).

Every evaluator that recalibrates (the trainer's masked-mode path, DMMPE's traced scan, the
compiled engine's evaluator, export's sliced network) is compared with that reference, not with
each other. The supernet's own running statistics are replaced by garbage first, so a method
that keeps any share of them (momentum-based recalibration keeps 0.9**n) fails, and the
calibration chunks have different means, so averaging per-chunk variances instead of pooling
them fails too.

Tolerance: float32 BatchNorm inputs of magnitude <= ~10, reduced over <= 12 x 64 elements per
channel; flax computes a batch's variance as E[x^2] - E[x]^2 in float32, so its absolute error
is a few ulps of E[x^2]: we allow 1e-5 x max(E[x^2]) per layer (1e-5 ~ 100 float32 ulps),
and 1e-5 x max|x| on the means.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax import dmmpe, evaluate, export_lib
from evonas_jax.engine import EngineEvaluator
from evonas_jax.nn.supernet import extract_subnet, init_supernet, subnet_model
from evonas_jax.space import arch_masks, get_space
from evonas_jax.supernet_train import make_bn_step, recalibrate_bn
from evonas_jax.tasks import Classification

HW = 16


@pytest.fixture(scope="module")
def setup():
  space = dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 2, 2, 1))
  model, v = init_supernet(space, 10, jax.random.key(3), (HW, HW, 1))
  rng = np.random.default_rng(0)
  # Garbage shared statistics: any share of them left in a result is visible.
  garbage = jax.tree.map(lambda a: jnp.asarray(rng.uniform(5.0, 9.0, a.shape), a.dtype),
                         v["batch_stats"])
  v = {**v, "batch_stats": garbage}
  # Three chunks of 4 images whose means differ (offsets 0, 1, -1): pooled != mean of variances.
  chunks = [(rng.normal(size=(4, HW, HW, 1)) + off).astype(np.float32) for off in (0.0, 1.0, -1.0)]
  arch = space.decode(space.sample(7))
  return space, model, v, arch, chunks


def _captured_bn_inputs(module, variables, images) -> dict:
  """{module path: float64 input (N, ..., C)} of every BatchNorm in one train-mode forward."""
  got = {}

  def grab(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      got[context.module.path] = np.asarray(args[0], np.float64)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(grab):
    module.apply(variables, jnp.asarray(images), train=True, mutable=["batch_stats"])
  return got


def _reference(space, v, arch, chunks) -> dict:
  net = subnet_model(space, arch, 10)
  sub = extract_subnet(v, space, arch)
  per_chunk = [_captured_bn_inputs(net, sub, c) for c in chunks]
  ref = {}
  for path in per_chunk[0]:
    x = np.concatenate([p[path].reshape(-1, p[path].shape[-1]) for p in per_chunk])
    ref[path] = (x.mean(0), x.var(0), float(np.abs(x).max()), float((x * x).mean(0).max()))
  return ref


def _assert_matches(stats, ref, what):
  n = 0
  for path, (mean, var, xmax, sqmax) in ref.items():
    node = stats
    for k in path:
      node = node[k]
    np.testing.assert_allclose(np.asarray(node["mean"]), mean, rtol=0, atol=1e-5 * xmax,
                               err_msg=f"{what}: mean of {'/'.join(path)}")
    np.testing.assert_allclose(np.asarray(node["var"]), var, rtol=0, atol=1e-5 * sqmax,
                               err_msg=f"{what}: var of {'/'.join(path)}")
    n += 1
  assert n == evaluate.bn.num_layers(stats) > 0


def test_every_evaluator_gives_the_exact_statistics(setup):
  space, model, v, arch, chunks = setup
  ref = _reference(space, v, arch, chunks)
  masks = arch_masks(space, arch)

  # The trainer's masked-mode evaluation.
  got = recalibrate_bn(make_bn_step(model), v, chunks, masks)
  _assert_matches(got["batch_stats"], ref, "supernet_train.recalibrate_bn (masked)")

  # DMMPE / the data-parallel baseline: the traced scan inside a jit.
  got = jax.jit(lambda var, c: dmmpe._recalibrated(model, var, masks, c))(v, np.stack(chunks))
  _assert_matches(got["batch_stats"], ref, "dmmpe._recalibrated (scan)")

  # The compiled engine's evaluator (training evaluation with engine="compiled", engine pool).
  got = EngineEvaluator(model, space, Classification()).recalibrate_bn(v, chunks, arch)
  _assert_matches(got["batch_stats"], ref, "EngineEvaluator.recalibrate_bn")

  # Export: the sliced standalone network.
  net, sub = subnet_model(space, arch, 10), extract_subnet(v, space, arch)
  got = export_lib.recalibrate(net, sub, chunks, progress=False)
  _assert_matches(got["batch_stats"], ref, "export_lib.recalibrate (sliced)")


def test_unequal_chunks_are_weighted_by_size(setup):
  """The host loop pools chunks of different sizes by their image counts."""
  space, model, v, arch, chunks = setup
  pooled = np.concatenate(chunks)
  uneven = [pooled[:2], pooled[2:9], pooled[9:]]
  ref = _reference(space, v, arch, uneven)
  net, sub = subnet_model(space, arch, 10), extract_subnet(v, space, arch)
  step = export_lib.make_bn_step(net)
  stats = evaluate.exact_batch_stats(lambda bs, im: step({**sub, "batch_stats": bs}, im),
                                     sub["batch_stats"], uneven)
  _assert_matches(stats, ref, "exact_batch_stats (uneven chunks)")


def test_errors_and_passthrough(setup):
  _, _, v, _, _ = setup
  with pytest.raises(ValueError, match="no calibration batches"):
    evaluate.exact_batch_stats(lambda bs, im: bs, v["batch_stats"], [])
  with pytest.raises(ValueError, match="batch_stats"):
    evaluate.exact_batch_stats(lambda bs, im: bs, {"layer": np.zeros(3)}, [np.zeros((1, 2))])
  plain = {"params": {"w": np.ones(2)}}
  assert evaluate.recalibrated(lambda bs, im: bs, plain, [np.zeros((1, 2))]) is plain
