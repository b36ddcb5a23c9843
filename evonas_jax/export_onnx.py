"""ONNX export of a sliced subnet, and onnxruntime inference to check it.

    convert(apply_fn, image_shape, path, output_names) -> {"file", "opset", "nodes", ...}
    run(path, images, threads=1) -> {output name: array}

`apply_fn(images (B, H, W, C) float32)` is the standalone subnet with its (sliced, BatchNorm
recalibrated) variables closed over: they become ONNX initializers, so the .onnx file is the whole
model. The batch dimension is symbolic ("B"). The converter is jax2onnx, which traces the jaxpr
and writes every primitive as standard ONNX ops; the selective scan must be the pure-JAX
"reference" backend (a `lax.scan`, written as an ONNX Loop), the NC-SSD mixer and attention are
plain matmuls and elementwise ops. Nothing here needs a GPU.

jax2onnx pins orbax-checkpoint below the version this project uses, so it is installed without
its dependencies (`pip install --no-deps jax2onnx==0.17.1`; onnx, onnx-ir and onnxruntime
normally, the `onnx` extra): `make setup` does both; `require()` says how otherwise.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from evonas_jax import onnx_patches

OPSET = 17   # onnxruntime >= 1.11 runs it; newer opsets add nothing these graphs use


def require():
  """Imports (jax2onnx, onnxruntime) or raises ImportError naming how to install them."""
  try:
    import jax2onnx
    import onnxruntime
  except ImportError as e:
    raise ImportError(
        f"ONNX export needs jax2onnx and onnxruntime ({e}); install them with "
        "`pip install -e \".[onnx]\" && pip install --no-deps jax2onnx==0.17.1` "
        "(jax2onnx's own pins would downgrade orbax-checkpoint)") from None
  return jax2onnx, onnxruntime


def convert(apply_fn: Callable, image_shape: Sequence[int], path: str,
            output_names: Sequence[str], opset: int = OPSET, model_name: str = "evonas_jax") -> dict:
  """Writes `path` (.onnx) for apply_fn over images ("B", *image_shape) float32; returns a
  description {"file", "opset", "nodes", "bytes", "seconds", "inputs", "outputs"}."""
  jax2onnx, _ = require()
  import logging
  # onnx_ir logs one "value type ... not known" warning per shape constant it writes (thousands
  # for a VSSD subnet); they are harmless (the shapes are constants) and bury the real output.
  logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
  # jax2onnx imports its example plugins too and logs a traceback for each one whose optional
  # dependency (dm_pix, equinox) is absent; none of them is used for these graphs.
  logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
  t0 = time.time()
  with onnx_patches.linear_time_output_check(), onnx_patches.fast_jax2onnx():
    model = jax2onnx.to_onnx(apply_fn, inputs=[("B", *[int(s) for s in image_shape])],
                             model_name=model_name, opset=opset, input_names=["images"],
                             output_names=list(output_names))
  blob = model.SerializeToString()
  with open(path, "wb") as f:
    f.write(blob)
  return {"file": os.path.basename(path), "opset": int(opset), "nodes": len(model.graph.node),
          "bytes": len(blob), "seconds": round(time.time() - t0, 2),
          "inputs": {"images": ["B", *[int(s) for s in image_shape]]},
          "outputs": list(output_names)}


def session(path: str, threads: int = 1):
  """An onnxruntime CPU InferenceSession with a fixed thread count: the latency timer's own
  session (`ort_latency.session`), so checks and timings run the same configuration."""
  require()
  from evonas_jax import ort_latency
  return ort_latency.session(path, int(threads))


def run(path_or_session, images: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
  """{output name: array} of the ONNX model on images (B, H, W, C) float32."""
  sess = (session(path_or_session, threads) if isinstance(path_or_session, str)
          else path_or_session)
  names = [o.name for o in sess.get_outputs()]
  outs = sess.run(names, {"images": np.asarray(images, np.float32)})
  return dict(zip(names, outs))


def output_names(outputs) -> list[str]:
  """ONNX output names for a model's JAX output: "logits" for an array, the sorted keys of a
  dict (jax2onnx flattens a dict in sorted-key order, as jax.tree does)."""
  if isinstance(outputs, dict):
    return sorted(outputs)
  return ["logits"]


def flatten_outputs(outputs) -> list[np.ndarray]:
  """The JAX outputs in the order of `output_names`."""
  if isinstance(outputs, dict):
    return [np.asarray(outputs[k]) for k in sorted(outputs)]
  return [np.asarray(outputs)]
