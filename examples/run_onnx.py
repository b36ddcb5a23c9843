"""Run an exported subnet's model.onnx with numpy + onnxruntime only (no JAX, no evonas_jax).

  python examples/run_onnx.py EXPORT_DIR [--images x.npy] [--threads 1]

EXPORT_DIR is a `python -m evonas_jax.export ... --formats onnx` folder. Images are (B, H, W, C)
float32, normalised as arch.json's "normalization" says; without --images, 4 random ones. For a
classification subnet prints the predicted classes and the logits as JSON; for a dense subnet
the output shapes.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("export_dir")
p.add_argument("--images", help=".npy file of (B, H, W, C) float32 images")
p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
args = p.parse_args()
d = args.export_dir

meta = json.load(open(f"{d}/arch.json"))
if "onnx" not in meta["artifacts"]:
  raise SystemExit(f"{d} has no model.onnx: export it with --formats onnx (or jax_export,onnx)")
so = ort.SessionOptions()
so.intra_op_num_threads = args.threads
sess = ort.InferenceSession(f"{d}/{meta['artifacts']['onnx']['file']}", so,
                            providers=["CPUExecutionProvider"])
images = (np.load(args.images) if args.images else
          np.random.default_rng(0).normal(size=(4, *meta["image_shape"]))).astype(np.float32)
names = [o.name for o in sess.get_outputs()]
outputs = dict(zip(names, sess.run(names, {"images": images})))
print(f"onnxruntime {ort.__version__}, arch {meta['arch_short']}, images {images.shape}")
if meta["task"] == "classification":
  logits = outputs["logits"]
  print("predicted classes:", [meta["class_names"][i] for i in logits.argmax(-1)])
  print("logits_json:", json.dumps(logits.tolist()))
else:
  print({k: v.shape for k, v in outputs.items()})
