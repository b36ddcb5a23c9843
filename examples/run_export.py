"""Runs an exported EvoNet with numpy + jax only (nothing from evonas_jax).

  python examples/run_export.py EXPORT_DIR [--images x.npy] [--orbax]

EXPORT_DIR comes from `python -m evonas_jax.export`. Images are (B, H, W, C) float32, already
normalised as arch.json["normalization"] says; without --images, random ones are used.
--orbax reads the params/ orbax checkpoint (needs orbax-checkpoint) instead of params.npz.
"""
import argparse
import json

import jax
import numpy as np
from jax import export

p = argparse.ArgumentParser()
p.add_argument("export_dir")
p.add_argument("--images", help=".npy file of (B, H, W, C) float32 images")
p.add_argument("--orbax", action="store_true", help="load params/ (orbax) instead of params.npz")
args = p.parse_args()
d = args.export_dir

# --- the ten lines ------------------------------------------------------------------------
meta = json.load(open(f"{d}/arch.json"))
platform = "cuda" if jax.default_backend() == "gpu" and "cuda" in meta["artifacts"] else "cpu"
model = export.deserialize(open(f"{d}/{meta['artifacts'][platform]['file']}", "rb").read())
params = dict(np.load(f"{d}/params.npz"))            # {"params/stem/conv/kernel": array, ...}
if args.orbax:                                        # the same variables, from the orbax folder
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(f"{d}/params")
  params = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
images = (np.load(args.images) if args.images else
          np.random.default_rng(0).normal(size=(4, *meta["image_shape"]))).astype(np.float32)
logits = np.asarray(model.call(params, images))       # (B, num_classes)
# -------------------------------------------------------------------------------------------
print(f"platform {platform}, arch {meta['arch_short']}, images {images.shape}")
print("predicted classes:", [meta["class_names"][i] for i in logits.argmax(-1)])
print("logits_json:", json.dumps(logits.tolist()))
