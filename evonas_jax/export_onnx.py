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

import contextlib
import os
import time
from typing import Callable, Sequence

import numpy as np

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


@contextlib.contextmanager
def _linear_time_output_check():
  """jax2onnx (0.17) checks, after lowering each equation, that its outputs are "graph
  connected" by scanning every node built so far: quadratic in the graph size. A VSSD subnet
  has ~5,000 equations, and the scan took 650 of 750 s of one conversion (cProfile). This swaps
  in a check with the same answer: a value whose producing node belongs to the builder's graph
  is connected (the scan would find that node); anything else goes to the original scan."""
  try:
    from jax2onnx.converter import output_binding
  except ImportError:   # another jax2onnx layout: keep its own check
    yield
    return
  original = getattr(output_binding, "_value_is_graph_connected", None)
  if original is None:
    yield
    return

  def connected(ctx, value):
    producer = getattr(value, "producer", None)
    node = producer() if callable(producer) else None
    graph = getattr(getattr(ctx, "builder", None), "graph", None)
    if node is not None and graph is not None and getattr(node, "graph", None) is graph:
      return True
    return original(ctx, value)

  output_binding._value_is_graph_connected = connected
  try:
    yield
  finally:
    output_binding._value_is_graph_connected = original


def convert(apply_fn: Callable, image_shape: Sequence[int], path: str,
            output_names: Sequence[str], opset: int = OPSET, model_name: str = "evonas_jax") -> dict:
  """Writes `path` (.onnx) for apply_fn over images ("B", *image_shape) float32; returns a
  description {"file", "opset", "nodes", "bytes", "seconds", "inputs", "outputs"}."""
  jax2onnx, _ = require()
  import logging
  # onnx_ir logs one "value type ... not known" warning per shape constant it writes (thousands
  # for a VSSD subnet); they are harmless (the shapes are constants) and bury the real output.
  logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
  t0 = time.time()
  with _linear_time_output_check():
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
  """An onnxruntime CPU InferenceSession with a fixed thread count (timings stay comparable)."""
  _, ort = require()
  so = ort.SessionOptions()
  so.intra_op_num_threads = int(threads)
  so.inter_op_num_threads = 1
  return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


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
