"""Latency bundles: the lookup table's ops as ONNX models, to be timed on the target device.

    python -m evonas_jax.latency_bundle --space evonas --preset tiny --num_classes 10 \
        --image_shape 28,28,1 --out latency_bundle
    # or take space, classes and image shape from a training or search workdir:
    python -m evonas_jax.latency_bundle --workdir workdirs/quickstart --out latency_bundle
    # then, on the device (numpy + onnxruntime only, no jax, no evonas_jax):
    python latency_bundle/build_device_table.py latency_bundle --out table.json --threads 1
    # and back on the host:
    python -m evonas_jax.search ... --config.latency_table=table.json

The bundle folder:
    manifest.json           format, space/preset/dims/max_depths/num_classes/image_shape/batch,
                            evonas_jax version, opset, and the op list
                            [{"key", "file", "input_shape", "reps", "convert_seconds", "nodes"}]
    ops/NNN_<key>.onnx      one model per op of `evonas_jax.latency.table_ops` (the very list the
                            XLA table times) plus ops/dispatch_overhead.onnx (x + 1, the per-call
                            overhead of session.run); input "images" (batch, H, W, C) float32,
                            output "y"
    build_device_table.py, ort_latency.py   the standalone table builder and its timing code

Block halves (shape-preserving) hold `reps` = 8 chained applications of the op in one graph
(sharing one set of weights), and the device divides by 8: the XLA table times them as 8
applications inside one compiled loop, so both backends measure per-application time without
the per-call overhead. The op is converted once by jax2onnx and the chain is assembled at the
ONNX level (`chain_model`): the same unrolled graph, but one conversion of the op instead of
one of an 8x larger function (measured with plain jax2onnx 0.17 on one VSSD mixer half: 0.9 s
for the op, 11 s for its 8x unrolled function, superlinear in graph size).

Conversions (`export_onnx.convert`) run under `onnx_patches.fast_jax2onnx`, which removes three quadratic scans of jax2onnx 0.17 and
a bug that makes every conversion after the first in a process write static slices as
GatherND (2x the nodes); it gives the graph of a first, unpatched conversion (checked node for
node and initializer for initializer on a 14-block tiny subnet: 108 s -> 10 s under load).

Weights are seeded random normals (scale 0.02): latency does not depend on their values, and
non-constant weights let a test check each converted op against JAX (a constant weight matrix
would hide a transposed one).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.space import SearchSpace

FORMAT = "evonas_jax.latency_bundle/1"
INPUT, OUTPUT = "images", "y"


def op_variables(op, seed: int = 0):
  """Seeded random variables of op.module (a `latency.TableOp`'s) for input op.input_shape:
  normal with scale 0.02, BatchNorm statistics in [1, ~1.3]; from shapes alone (eval_shape:
  nothing is compiled). Returns {collection: pytree of numpy arrays}."""
  shapes = jax.eval_shape(op.module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(op.input_shape, jnp.float32))
  rng = np.random.default_rng(seed)
  out = {k: jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), v)
         for k, v in shapes.items() if k != "batch_stats"}
  if "batch_stats" in shapes:
    # BatchNorm statistics: a variance must be positive (a negative one gives NaN); means and
    # variances both near 1.
    out["batch_stats"] = jax.tree.map(
        lambda a: (1.0 + 0.1 * np.abs(rng.standard_normal(a.shape))).astype(a.dtype),
        shapes["batch_stats"])
  return out


def _rename_graph(g, rename) -> None:
  """Applies rename(name) -> name to every value name of graph g (in place), subgraphs (Loop
  and If bodies) included, so outer-scope references inside them follow."""
  for vi in list(g.input) + list(g.output) + list(g.value_info):
    vi.name = rename(vi.name)
  for init in g.initializer:
    init.name = rename(init.name)
  for n in g.node:
    n.input[:] = [rename(x) for x in n.input]
    n.output[:] = [rename(x) for x in n.output]
    if n.name:
      n.name = rename(n.name)
    for a in n.attribute:
      if a.HasField("g"):
        _rename_graph(a.g, rename)
      for sg in a.graphs:
        _rename_graph(sg, rename)


def chain_model(model, n: int):
  """The ONNX model of x -> f(f(...f(x))) (n applications, unrolled) for a shape-preserving
  one-input, one-output model f; all applications share f's initializers (its weights).

  model: onnx.ModelProto with input INPUT and output OUTPUT; returns a new ModelProto."""
  import onnx
  g = model.graph
  if len(g.input) != 1 or len(g.output) != 1:
    raise ValueError(f"chain_model needs one input and one output, got {len(g.input)} inputs "
                     f"and {len(g.output)} outputs")
  x_name, y_name = g.input[0].name, g.output[0].name
  shared = {i.name for i in g.initializer}
  out = onnx.ModelProto()
  out.CopyFrom(model)
  del out.graph.node[:]
  # The converter's shape annotations are kept, renamed per copy, as in the model the export
  # ships (onnxruntime's speed depends on them: on one whole subnet, 3.1 vs 2.6 ms without).
  del out.graph.value_info[:]
  for i in range(n):
    src = x_name if i == 0 else f"c{i - 1}/{y_name}"
    dst = y_name if i == n - 1 else f"c{i}/{y_name}"

    def rename(name, i=i, src=src, dst=dst):
      if not name or name in shared:
        return name
      if name == x_name:
        return src
      if name == y_name:
        return dst
      return f"c{i}/{name}"
    copy = onnx.GraphProto()
    copy.node.extend(g.node)
    copy.value_info.extend(vi for vi in g.value_info if vi.name not in (x_name, y_name))
    _rename_graph(copy, rename)
    out.graph.node.extend(copy.node)
    out.graph.value_info.extend(copy.value_info)
  return out


def _safe(key: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in key)


def _quiet_converter_logs() -> None:
  # jax2onnx imports its optional example plugins (equinox, dm_pix, ...) and logs a traceback
  # for each missing one; onnx_ir logs one line per shape constant. Neither affects the result.
  for name in ("jax2onnx", "jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
    logging.getLogger(name).setLevel(logging.ERROR)


def convert_op(op, path: str, variables=None) -> dict:
  """Writes op (a `latency.TableOp`) as one ONNX model at `path`: op.reps chained applications.
  Returns {"convert_seconds", "nodes", "bytes"}."""
  import onnx
  from evonas_jax import export_onnx
  _quiet_converter_logs()
  v = op_variables(op) if variables is None else variables
  t0 = time.perf_counter()
  export_onnx.convert(lambda x: op.module.apply(v, x), op.input_shape[1:], path, [OUTPUT],
                      model_name=_safe(op.key))
  if op.reps > 1:
    m = chain_model(onnx.load(path), op.reps)
    onnx.save(m, path)
  m = onnx.load(path, load_external_data=False)
  return {"convert_seconds": round(time.perf_counter() - t0, 3), "nodes": len(m.graph.node),
          "bytes": os.path.getsize(path)}


def write_bundle(space: SearchSpace, num_classes: int, image_shape, out: str, *,
                 batch: int = 1, progress: bool = True, overwrite: bool = False) -> dict:
  """Writes the bundle folder `out` (see the module docstring) and returns its manifest.

  image_shape: (H, W, C) of one input image. `out` must be empty or absent unless overwrite."""
  from tqdm.auto import tqdm
  from evonas_jax import __version__, export_onnx, latency
  from evonas_jax.tools import build_device_table
  export_onnx.require()
  image_shape = tuple(int(s) for s in image_shape)
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite)")
    shutil.rmtree(out)
  os.makedirs(os.path.join(out, "ops"), exist_ok=True)
  # Conversion needs the pure-JAX selective scan (the CUDA kernel has no ONNX form).
  ops = latency.table_ops(space, num_classes, image_shape, batch=batch, scan_backend="reference")
  entries = []
  t0 = time.perf_counter()
  for i, op in enumerate(tqdm(ops, desc="latency bundle: convert", unit="op",
                              disable=not progress, dynamic_ncols=True, mininterval=2.0)):
    fname = f"ops/{i:03d}_{_safe(op.key)}.onnx"
    d = convert_op(op, os.path.join(out, fname))
    entries.append({"key": op.key, "file": fname, "input_shape": list(op.input_shape),
                    "reps": op.reps, **d})
  # The per-call overhead of session.run (LatencyTable.predict subtracts it from each per-call
  # op and counts it once for the network).
  x_shape = (batch, *image_shape)
  t = time.perf_counter()
  export_onnx.convert(lambda x: x + 1.0, image_shape,
                      os.path.join(out, "ops/dispatch_overhead.onnx"), [OUTPUT],
                      model_name="dispatch_overhead")
  entries.append({"key": "dispatch_overhead", "file": "ops/dispatch_overhead.onnx",
                  "input_shape": list(x_shape), "reps": 1,
                  "convert_seconds": round(time.perf_counter() - t, 3)})
  total = time.perf_counter() - t0
  manifest = {"format": FORMAT, **latency.space_meta(space, num_classes, image_shape, batch),
              "evonas_jax_version": __version__, "opset": export_onnx.OPSET,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "input_name": INPUT, "output_name": OUTPUT,
              "convert_seconds": round(total, 2),
              "convert_seconds_per_op": round(total / len(entries), 3),
              "ops": entries}
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  # The device side: the table builder and the timing module it loads from its own folder.
  from evonas_jax import ort_latency
  shutil.copy(build_device_table.__file__, os.path.join(out, "build_device_table.py"))
  shutil.copy(ort_latency.__file__, os.path.join(out, "ort_latency.py"))
  return manifest


def _space_from_workdir(workdir: str):
  """(space, num_classes, image_shape) of a training workdir, or of a search workdir's
  supernet (its config.json names supernet_workdir)."""
  from evonas_jax.search_lib import load_supernet
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir {workdir}: no config.json (a training or search workdir)")
  with open(path) as f:
    cfg = json.load(f)
  train_dir = cfg.get("supernet_workdir") or workdir
  space, _, _, _, info, _ = load_supernet(train_dir)
  return space, max(int(info.num_classes), 1), tuple(info.image_shape)


def main(argv=None) -> int:
  import dataclasses
  from evonas_jax.space import get_space
  p = argparse.ArgumentParser(description="Writes a latency bundle (per-op ONNX models + the "
                              "standalone device-side table builder).")
  p.add_argument("--out", required=True, help="the bundle folder to write")
  p.add_argument("--workdir", default="", help="take space, classes and image shape from this "
                 "training workdir (or a search workdir with a supernet_workdir)")
  p.add_argument("--space", default="evonas")
  p.add_argument("--preset", default="tiny")
  p.add_argument("--max_depths", default="", help="comma list overriding the preset's, e.g. 1,2,2,1")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--image_shape", default="28,28,1", help="H,W,C")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--overwrite", action="store_true")
  a = p.parse_args(argv)
  if a.workdir:
    space, num_classes, image_shape = _space_from_workdir(a.workdir)
  else:
    space = get_space(a.space, a.preset)
    if a.max_depths:
      space = dataclasses.replace(space, max_depths=tuple(int(v) for v in a.max_depths.split(",")))
    num_classes = a.num_classes
    try:
      image_shape = tuple(int(v) for v in a.image_shape.split(","))
    except ValueError:
      raise ValueError(f"--image_shape={a.image_shape!r} must be H,W,C integers") from None
    if len(image_shape) != 3:
      raise ValueError(f"--image_shape={a.image_shape!r} must be H,W,C (3 integers)")
  if a.batch < 1:
    raise ValueError(f"--batch={a.batch} must be >= 1")
  m = write_bundle(space, num_classes, image_shape, a.out, batch=a.batch, overwrite=a.overwrite)
  print(f"wrote {a.out}: {len(m['ops']) - 1} ops + the dispatch op for {m['space']}/{m['preset']} "
        f"(dims {m['dims']}, max_depths {m['max_depths']}, {m['num_classes']} classes, image "
        f"{m['image_shape']}, batch {m['batch']}) in {m['convert_seconds']:.0f} s "
        f"({m['convert_seconds_per_op']:.2f} s/op)\n"
        f"on the device: python {a.out}/build_device_table.py {a.out} --out table.json")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
