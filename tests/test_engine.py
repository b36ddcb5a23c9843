"""The compiled engine (evonas_jax.engine) against the masked-mode reference.

The masked supernet (full width + masks, one program) is the reference the whole project is
tested against (masked == sliced == standalone, test_supernet.py). The engine runs the sampled
subnet piece by piece at its own widths, so its gradients, BatchNorm statistics, metrics and
predictions must equal the masked ones: the only difference is float32 summation order.

Tolerances: 1e-5 absolute on gradients whose largest entries are ~30 (observed max difference
2e-6), and on activations/logits of order 1. The CA-DDKD frequency loss is left out of the
gradient comparison (alpha_frequency = 0): at initialisation its mean-centred projection is a
difference of nearly equal numbers, which amplifies the 1e-7 relative rounding differences of
the two summation orders to ~1e-3 relative in its own gradient (measured), whatever the engine.
Both engines run the same objective code for it (supernet_loss.make_subnet_objective).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evonas_jax import data as data_lib
from evonas_jax import parallel
from evonas_jax.engine import CompiledBackbone, EngineEvaluator, EngineTrainStep
from evonas_jax.nn.supernet import EvoNet, init_supernet, supernet_spec
from evonas_jax.nn.teacher import teacher_from_config
from evonas_jax.pst import PSTSchedule
from evonas_jax.space import arch_masks, get_space
from evonas_jax.steps import ShardedTrainStep
from evonas_jax.supernet_loss import DistillSetup, make_supernet_loss
from evonas_jax.supernet_train import make_bn_step, recalibrate_bn
from evonas_jax.tasks import Classification, get_task
from evonas_jax.trainer import make_supernet_trainer
from helpers import load_config, use_digits


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_trees_close(got, want, atol, what):
  g, w = _flat(got), _flat(want)
  assert g.keys() == w.keys(), f"{what}: keys differ: {sorted(set(g) ^ set(w))[:6]}"
  # |diff| <= atol * max(1, max |leaf|): 1e-5 absolute for leaves of order <= 1, relative to
  # the leaf's scale above it (float32 resolves ~6e-8 of a value; sums over thousands of terms
  # in two orders differ by ~1e-6 of their scale).
  worst = max(((float(np.max(np.abs(g[k] - w[k])) / max(1.0, float(np.max(np.abs(w[k])))))
                if w[k].size else 0.0), k) for k in w)
  assert worst[0] <= atol, f"{what}: max scaled |diff| {worst[0]:.3g} at {worst[1]}"


def _archs(space, n_random=2, seed=0):
  return [space.largest(), space.smallest()] + [
      space.decode(np.asarray(space.sample(jax.random.key(seed + i)))) for i in range(n_random)]


@pytest.fixture(scope="module")
def distill_trainers(tmp_path_factory):
  """Masked and engine supernet trainers of the same CA-DDKD config (teacher KD + spatial
  projector with BatchNorm), same initial state, one device."""
  tmp = tmp_path_factory.mktemp("engine")
  # 32x32: the last stage is 2x2. At 16x16 it is 1x1 and downsample3's BatchNorm normalises 16
  # values per channel, some nearly constant, which amplifies float rounding ~300x in the
  # gradients (measured: 8e-3 on one arch under jax_disable_most_optimizations, for both the
  # rounding of masked-vs-engine and of optimised-vs-unoptimised XLA).
  c = use_digits(load_config("ci_tiny"), tmp, image_size=32)
  c.batch_size = 16
  c.pst.enabled = False
  c.distill.alpha_frequency = 0.0
  space = get_space("evonas", "tiny")
  info = data_lib.dataset_info(c.data)
  teacher = teacher_from_config(c.teacher.model, info.num_classes)
  t_vars = jax.jit(functools.partial(teacher.init, train=False))(
      jax.random.key(5), jnp.zeros((1, *info.image_shape)))
  mesh = parallel.make_data_mesh(1)
  schedule = PSTSchedule(c.num_steps, enabled=False, k_max=1)
  out = {}
  for engine in ("masked", "compiled"):
    c.engine = engine
    step_fn, state, _ = make_supernet_trainer(c, space, info, schedule, teacher,
                                              parallel.replicate(mesh, t_vars), mesh,
                                              jax.random.key(0), tx=optax.sgd(0.01))
    # Sharper projector queries: a well-conditioned spatial loss (see test_train_parallel).
    p = state["params"]
    p["proj_spatial"] = dict(p["proj_spatial"], queries=p["proj_spatial"]["queries"] * 50.0)
    out[engine] = (step_fn, state)
  batch = next(data_lib.train_iterator(c.data, c.batch_size, seed=0))
  return dict(space=space, mesh=mesh, t_vars=t_vars, batch=batch, c=c, info=info,
              teacher=teacher, schedule=schedule, **out)


def test_engine_subnet_gradients_equal_masked(distill_trainers):
  d = distill_trainers
  mesh, space = d["mesh"], d["space"]
  (masked, m_state), (engine, e_state) = d["masked"], d["compiled"]
  assert isinstance(engine, EngineTrainStep) and not isinstance(masked, EngineTrainStep)
  b = parallel.shard_batch(mesh, {"image": d["batch"]["image"], "label": d["batch"]["label"]})
  tv = parallel.replicate(mesh, d["t_vars"])
  aux = masked._prologue(tv, b)
  target, use = masked._no_target(b["image"].shape[0])
  for arch in _archs(space):
    genome = np.asarray(space.encode(arch), np.int32)
    want = jax.device_get(masked._grad(m_state["params"], m_state["batch_stats"], aux, b,
                                       parallel.replicate(mesh, genome), target, use,
                                       jax.random.key(1)))
    got = jax.device_get(engine.subnet_grad(e_state["params"], e_state["batch_stats"], aux, b,
                                            genome, target, use, jax.random.key(1)))
    _assert_trees_close(got[0], want[0], 1e-5, f"grads of {arch}")
    _assert_trees_close(got[1], want[1], 1e-5, f"batch_stats of {arch}")
    _assert_trees_close(got[3], want[3], 1e-5, f"logits of {arch}")
    for k in ("loss", "ce", "kd", "spatial"):
      np.testing.assert_allclose(got[2][k], want[2][k], rtol=1e-5, atol=1e-5, err_msg=k)
    # Exactly zero outside the subnet: a skipped block's whole gradient.
    skipped = [i for i, bit in enumerate(arch.depth[2]) if not bit]
    for i in skipped:
      assert all(np.all(v == 0) for v in _flat(got[0]["student"][f"stage2_block{i}"]).values())


def test_engine_step_equals_masked_step_and_sandwich_target(distill_trainers):
  """Whole steps (k = 2: gradients summed over subnets, in-place KD target from the first one,
  optimizer update) agree, then an 8-device engine step equals the 1-device one."""
  d = distill_trainers
  space, c = d["space"], d["c"]
  genomes = np.stack([space.encode(a) for a in _archs(space, 1, seed=7)[1:3]]).astype(np.int32)
  tv1 = parallel.replicate(d["mesh"], d["t_vars"])
  b1 = parallel.shard_batch(d["mesh"], {"image": d["batch"]["image"],
                                         "label": d["batch"]["label"]})
  # One state layout for both engines: checkpoints, resume and init_from cross over.
  assert jax.tree.structure(d["masked"][1]) == jax.tree.structure(d["compiled"][1])
  results = {}
  for engine in ("masked", "compiled"):
    step_fn, state = d[engine]
    state = jax.tree.map(jnp.copy, state)   # the fixture's state is reused (steps donate)
    new, m = step_fn(state, tv1, b1, genomes, jax.random.key(3))
    results[engine] = (jax.device_get(new), jax.device_get(m))
  _assert_trees_close(results["compiled"][0]["params"], results["masked"][0]["params"], 1e-6,
                      "params after one SGD step")
  _assert_trees_close(results["compiled"][0]["batch_stats"],
                      results["masked"][0]["batch_stats"], 1e-5, "batch_stats after one step")
  np.testing.assert_allclose(results["compiled"][1]["loss"], results["masked"][1]["loss"],
                             rtol=1e-5)
  # 8 devices: XLA partitions the engine's programs over the batch; same result.
  mesh8 = parallel.make_data_mesh(8)
  c.engine = "compiled"
  step8, state8 = make_supernet_trainer(c, space, d["info"], d["schedule"], d["teacher"],
                                        parallel.replicate(mesh8, d["t_vars"]), mesh8,
                                        jax.random.key(0), tx=optax.sgd(0.01))[:2]
  p = state8["params"]
  p["proj_spatial"] = dict(p["proj_spatial"], queries=p["proj_spatial"]["queries"] * 50.0)
  b8 = parallel.shard_batch(mesh8, {"image": d["batch"]["image"], "label": d["batch"]["label"]})
  new8, m8 = step8(state8, parallel.replicate(mesh8, d["t_vars"]), b8, genomes,
                   jax.random.key(3))
  _assert_trees_close(jax.device_get(new8["params"]), results["compiled"][0]["params"], 1e-6,
                      "8-device params")
  _assert_trees_close(jax.device_get(new8["batch_stats"]), results["compiled"][0]["batch_stats"],
                      1e-5, "8-device batch_stats")


def test_engine_backbone_hybrid_space_equals_masked():
  """Every mixer type (VSSD, SS2D selective scan, attention) and drop-path off: stage features
  and the vjp of a random cotangent through the backbone equal masked mode's.

  The bias of each downsample's last 1x1 conv ("project") feeds a train-mode BatchNorm, which
  subtracts the batch mean: its exact gradient is zero, and both engines return only the
  rounding of a sum of M = B*H*W terms g_p (the cotangent at the conv output) that cancel. That
  rounding has no common reference value, so for those leaves each engine's result is held to
  a float32 rounding bound instead. Three sums of M terms enter it: the final sum (at most
  (M - 1) u sum|g_p|, Higham Thm 4.3, u = 2^-24, for any summation order) and the two batch means
  of the BatchNorm backward, mean(dy) and mean(dy * xhat), whose rounding every g_p shares and
  which therefore enter M times: each again at most (M - 1) u times its absolute sum, which the
  BatchNorm scale (1 at initialisation) and |xhat| (about 1) make about sum|g_p|. Bound used:
  3 (M - 1) u sum|g_p| per channel. The g_p come from the masked reference (an additive probe on
  the conv output, differentiated).
  """
  space = get_space("hybrid", "tiny")
  # 32x32 (last stage 2x2, batch 8): see distill_trainers on BatchNorm over too few values.
  model, v = init_supernet(space, 10, jax.random.key(0), (32, 32, 1))
  eng = CompiledBackbone(space)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 32, 32, 1)).astype(np.float32))
  archs = [space.decode(np.asarray(space.sample(jax.random.key(i)))) for i in range(6)]
  types = {t for a in archs for t in a.block_type}
  assert types == {"vssd", "ss2d", "attention"}, types
  bb = {k: w for k, w in v["params"].items() if k.startswith(("stem", "downsample", "stage"))}

  def masked_feats(params, masks, probes):
    def probe(next_fun, args, kwargs, context):   # adds probes[downsample_s] to project's output
      out = next_fun(*args, **kwargs)
      mod = context.module
      if (context.method_name == "__call__" and mod.name == "project"
          and mod.parent is not None and mod.parent.name in probes):
        out = out + probes[mod.parent.name]
      return out
    with nn.intercept_methods(probe):
      feats, _ = model.apply({"params": {**v["params"], **params},
                              "batch_stats": v["batch_stats"]},
                             x, masks, train=True, return_features=True, mutable=["batch_stats"])
    return feats[1]

  # Shapes of every downsample's project output (probes of zeros change nothing).
  shapes_seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and mod.name == "project" and mod.parent is not None:
      shapes_seen[mod.parent.name] = out.shape
    return out
  with nn.intercept_methods(record):
    shapes = jax.eval_shape(lambda p: masked_feats(p, arch_masks(space, archs[0]), {}), bb)
  probes = {k: jnp.zeros(s, jnp.float32) for k, s in shapes_seen.items()}
  assert sorted(probes) == ["downsample1", "downsample2", "downsample3"], sorted(probes)

  # One compiled masked reference for every arch (the masks are traced arguments): run eagerly,
  # op by op, it cost ~50 s per arch on 2 cores.
  @jax.jit
  def masked_ref(params, masks, cot):
    want, vjp = jax.vjp(lambda p, q: masked_feats(p, masks, q), params, probes)
    g_params, g_probes = vjp(cot)
    return want, g_params, g_probes

  u = 2.0 ** -24
  for arch in archs:
    masks = arch_masks(space, arch)
    cot = [jnp.asarray(rng.normal(size=f.shape).astype(np.float32)) for f in shapes]
    want, want_g, terms = masked_ref(bb, masks, cot)
    got, _, tape = eng.forward(bb, v["batch_stats"], x, arch, train=True)
    got_g = eng.backward(tape, cot)
    for s in range(4):
      np.testing.assert_allclose(got[s], want[s],
                                 atol=1e-5 * max(1.0, float(np.max(np.abs(want[s])))),
                                 err_msg=f"{arch} stage {s}")
    for k, g in want_g.items():
      ran = got_g.get(k, {})
      for path, val in _flat(g).items():
        sub = _flat(ran).get(path)
        if sub is None:   # not run by the engine: the masked gradient must be exactly zero
          assert np.all(val == 0), (arch, k, path)
        elif k in terms and path == "['project']['bias']":   # exactly zero: rounding bound
          t = np.asarray(terms[k]).reshape(-1, val.shape[-1])
          bound = 3 * (t.shape[0] - 1) * u * np.abs(t).sum(0)
          for name, res in (("engine", sub), ("masked", val)):
            assert np.all(np.abs(res) <= bound), (arch, k, name, np.abs(res) / bound)
        else:
          np.testing.assert_allclose(sub, val, atol=1e-5 * max(1.0, float(np.max(np.abs(val)))),
                                     err_msg=f"{arch} {k}{path}")


def test_engine_evaluator_equals_masked_recalibrated_eval():
  space = get_space("evonas", "tiny")
  model, v = init_supernet(space, 10, jax.random.key(1), (16, 16, 1))
  rng = np.random.default_rng(1)
  calib = [jnp.asarray(rng.normal(size=(8, 16, 16, 1)).astype(np.float32)) for _ in range(2)]
  images = jnp.asarray(rng.normal(size=(8, 16, 16, 1)).astype(np.float32))
  ev = EngineEvaluator(model, space, Classification())
  bn_step = make_bn_step(model)
  for arch in _archs(space, 1, seed=3):
    masks = arch_masks(space, arch)
    want_v = recalibrate_bn(bn_step, v, calib, masks)
    want = model.apply(want_v, images, masks)
    got_v = ev.recalibrate_bn(v, calib, arch)
    _assert_trees_close(got_v["batch_stats"], want_v["batch_stats"], 1e-5, "recalibrated BN")
    np.testing.assert_allclose(ev.predict(got_v, images, arch), want, atol=1e-5)


@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_engine_dense_gradients_equal_masked(head):
  """DenseEvoNet: outnorms + decoder (with its BatchNorm) as the engine's tail."""
  from evonas_jax.nn.dense import init_dense_model
  space = get_space("evonas", "tiny")
  k = 5
  # Dropout off: the engine's head draws its dropout masks from its own stream (as the masked
  # step does per device), so with dropout the two paths are equal only in distribution.
  head_cfg = (("dropout", 0.0),) if head == "segmentation" else ()
  # 64x64, batch 4: the decoder's BatchNorm on the 2x2 stage-4 map normalises 16 values per
  # channel (at 32x32, batch 2, it saw 2 and amplified rounding to ~5e-3).
  hw, n = 64, 4
  model, v = init_dense_model(space, head, head_cfg, k, 10.0, jax.random.key(2), (hw, hw, 3))
  rng = np.random.default_rng(2)
  batch = {"image": rng.normal(size=(n, hw, hw, 3)).astype(np.float32)}
  if head == "segmentation":
    task = get_task("segmentation", num_classes=k, ignore_label=255, aux_weight=0.4)
    batch["label"] = rng.integers(0, k, (n, hw, hw)).astype(np.int32)
  else:
    task = get_task("depth", min_depth=1e-3, max_depth=10.0)
    batch["depth"] = rng.uniform(0.5, 9.0, (n, hw, hw)).astype(np.float32)
  mesh = parallel.make_data_mesh(1)
  setup = DistillSetup(teacher=None, projector=None, task=task)
  tx = optax.sgd(0.1)
  masked = ShardedTrainStep(make_supernet_loss(model.clone(bn_axis_name=parallel.DATA_AXIS),
                                               space, setup), tx, mesh,
                            target_shape=task.target_shape((hw, hw, 3)))
  engine = EngineTrainStep(model, space, setup, tx, mesh,
                           target_shape=task.target_shape((hw, hw, 3)))
  params = parallel.replicate(mesh, {"student": v["params"]})
  bs = parallel.replicate(mesh, {"student": v["batch_stats"]})
  b = parallel.shard_batch(mesh, batch)
  target, use = masked._no_target(n)
  # The largest and the smallest subnet. On some random archs (e.g. sample(key(11))) the
  # decoder amplifies the backbone's 7e-7-relative float32 differences (the backbone itself
  # agrees to 3e-6 there, as test_engine_backbone_hybrid_space_equals_masked checks for every
  # mixer type) to 1.6e-4 of a gradient's scale: its BatchNorms on the coarse maps normalise
  # few values per channel. Reversing the batch order moves the masked gradient by only 7.5e-7,
  # so that is input sensitivity, not a summation-order effect the bound could be derived from.
  for arch in (space.largest(), space.smallest()):
    genome = np.asarray(space.encode(arch), np.int32)
    want = jax.device_get(masked._grad(params, bs, None, b, parallel.replicate(mesh, genome),
                                       target, use, jax.random.key(0)))
    got = jax.device_get(engine.subnet_grad(params, bs, None, b, genome, target, use,
                                            jax.random.key(0)))
    _assert_trees_close(got[0], want[0], 1e-5, f"{head} grads of {arch}")
    _assert_trees_close(got[1], want[1], 1e-5, f"{head} batch_stats of {arch}")
    np.testing.assert_allclose(got[2]["loss"], want[2]["loss"], rtol=1e-5)


def test_engine_compiles_once_per_width_signature():
  """Programs are keyed by width signature, shared by every block of a stage and every subnet
  with the same widths: training two subnets that differ only in depth builds nothing new."""
  space = get_space("evonas", "tiny")
  _, v = init_supernet(space, 10, jax.random.key(0), (16, 16, 1))
  eng = CompiledBackbone(space)
  bb = {k: w for k, w in v["params"].items() if k.startswith(("stem", "downsample", "stage"))}
  x = jnp.zeros((2, 16, 16, 1))
  big = space.largest()
  eng.backward(eng.forward(bb, v["batch_stats"], x, big, train=True)[2],
               [jnp.ones(f.shape) for f in eng.forward(bb, v["batch_stats"], x, big,
                                                        train=True)[0]])
  n = len(eng.programs)
  # stem + 3 downsamples + (mixer + mlp) x 4 stages, train mode
  assert n == 1 + 3 + 8, sorted(eng.programs)
  shallower = dataclasses.replace(big, depth=tuple((0,) + tuple(d[1:]) for d in big.depth))
  eng.forward(bb, v["batch_stats"], x, shallower, train=True)
  assert len(eng.programs) == n
  # other widths at stage 0 -> exactly two new pieces (its mixer and mlp halves)
  mlp = list(big.mlp_ratio)
  mlp[0] = space.mlp_choices[0]
  eng.forward(bb, v["batch_stats"], x, dataclasses.replace(big, mlp_ratio=tuple(mlp)), train=True)
  assert len(eng.programs) == n + 1


def test_engine_step_recompiles_nothing_for_a_new_depth_pattern(distill_trainers):
  """Whole train steps, counted in real XLA compiles (not the engine's own program keys): once
  a subnet's width signatures are built, a subnet with the same widths and other skipped blocks
  costs zero compiles. (This failed before the zero gradients of skipped blocks were committed
  like the computed ones: each new skip pattern recompiled the optimizer update, 6-9 s each.)"""
  from evonas_jax.compile_cache import CompileStats
  d = distill_trainers
  space = d["space"]
  step_fn, state = d["compiled"]
  state = jax.tree.map(jnp.copy, state)
  tv = parallel.replicate(d["mesh"], d["t_vars"])
  b = parallel.shard_batch(d["mesh"], {"image": d["batch"]["image"],
                                        "label": d["batch"]["label"]})
  big = space.largest()
  # Three depth patterns over the same widths: all blocks, first block of every stage
  # skipped, last block of every stage skipped.
  first_off = dataclasses.replace(big, depth=tuple((0,) + tuple(x[1:]) for x in big.depth))
  last_off = dataclasses.replace(big, depth=tuple(tuple(x[:-1]) + (0,) for x in big.depth))
  state, _ = step_fn(state, tv, b, np.stack([space.encode(big)]).astype(np.int32),
                     jax.random.key(1))
  stats = CompileStats()
  for i, arch in enumerate((first_off, last_off, big)):
    state, m = step_fn(state, tv, b, np.stack([space.encode(arch)]).astype(np.int32),
                       jax.random.key(2 + i))
    assert np.isfinite(float(m["loss"]))
  snap = stats.snapshot()
  assert snap["compiles"] == 0, snap
