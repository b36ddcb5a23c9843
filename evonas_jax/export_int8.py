"""Post-training static int8 quantisation of an exported model.onnx, with its accuracy and
batch-1 latency measured against the float32 model (onnxruntime, CPU).

    quantize(fp32_path, int8_path, calib_images, ...) -> description dict
    evaluate_classification(session_or_path, images, labels, batch=100) -> accuracy
    time_model(path, input_shape, threads=1, warmup=20, runs=200) -> {"p50_ms", "p90_ms", ...}
        (`evonas_jax.ort_latency.time_onnx`, the project's onnxruntime timer)
    validation_set(data_cfg, n, batch=200) -> (images (n, H, W, C) float32, labels (n,) int32)
    int8_artifact(folder, calib_images, val_images, val_labels, max_drop=0.01) -> arch.json entry

The scheme (onnxruntime's recommended CPU setting, "S8S8 QDQ"):
  * format QDQ: the int8 model is the float graph with QuantizeLinear -> DequantizeLinear pairs
    on the inputs (and outputs) of the quantised ops; at session creation onnxruntime fuses
    them with the op into an integer kernel (QLinearConv, QGemm, QLinearMatMul: int8 inputs,
    int32 accumulation) where its fusion rules allow; the rest run as float ops on dequantised
    values (`integer_kernels` counts what was fused: 59 of 98 Gemm and 3 of 4 Conv measured on
    a Fashion-MNIST EvoNet subnet);
  * weights int8, symmetric (zero point 0, range [-127, 127]), one scale per output channel:
    scale_k = max_i |W[i, k]| / 127 (axis 0 of a Conv kernel (O, I, kh, kw), axis 1 of a MatMul /
    Gemm weight (K, N));
  * activations int8, asymmetric, one scale and zero point per tensor from the calibration
    range [min(0, lo), max(0, hi)] of the tensor over the calibration images ("minmax"):
    scale = (hi - lo) / 255, zero_point = round(-128 - lo / scale);
  * biases int32 with scale = activation scale * weight scale;
  * quantised op types: Conv, MatMul, Gemm by default, the ops that hold the weights and nearly
    all the MACs. Elementwise ops, normalisation, softmax, Einsum and the selective-scan Loop stay
    float32: a Q/DQ pair around a cheap op costs more time than it saves at these sizes, and
    quantising LayerNorm / softmax inputs is where int8 accuracy is usually lost.

Before quantisation the graph goes through onnxruntime's recommended pre-processing
(`onnxruntime.quantization.shape_inference.quant_pre_process`: symbolic shape inference,
onnxruntime's graph optimisation (constant folding, node fusion) and ONNX shape inference); on a
tiny-preset EvoNet subnet it folds jax2onnx's shape arithmetic from ~2,550 to ~910 nodes. If it
raises, the raw graph is quantised instead and the error is recorded in the description.
jax2onnx writes every Dense layer as Gemm(x, W, C=0-d zero scalar, beta=0) followed by an Add of
the bias; onnxruntime's quantiser cannot take a 0-d Gemm bias (IndexError in its int32-bias
scale adjustment), so such an unused C input is removed first (Gemm's C is optional; beta=0
means it contributes nothing, so the graph computes the same function).

Nothing here needs JAX; `validation_set` uses the project's data pipeline.
"""
from __future__ import annotations

import collections
import os
import tempfile
import time
from typing import Sequence

import numpy as np

OP_TYPES = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_MAX_DROP = 0.01    # absolute accuracy the int8 model may lose before it is rejected
DEFAULT_VAL_IMAGES = 1000
THREADS = 1                # onnxruntime intra-op threads for every timing (inter-op: 1)
WARMUP, RUNS = 20, 200
INT8_FILE = "model.int8.onnx"


def _ort():
  try:
    import onnx
    import onnxruntime
    from onnxruntime import quantization  # noqa: F401
  except ImportError as e:
    raise ImportError(f"int8 quantisation needs onnx and onnxruntime ({e}); install them with "
                      "`pip install -e \".[onnx]\"`") from None
  return onnx, onnxruntime


def _session(path_or_model, threads: int = THREADS):
  """CPU InferenceSession with fixed intra-op threads, inter-op 1, sequential execution: the
  session the latency timer uses (`evonas_jax.ort_latency.session`)."""
  _ort()
  from evonas_jax import ort_latency
  return ort_latency.session(path_or_model, threads)


def _drop_zero_gemm_bias(model) -> int:
  """Removes Gemm's optional C input where it is a constant that contributes nothing (beta = 0
  or an all-zero initializer): jax2onnx's 0-d zero C breaks onnxruntime's quantiser. Edits
  `model` (onnx.ModelProto) in place; returns how many inputs were removed."""
  from onnx import numpy_helper
  inits = {t.name: t for t in model.graph.initializer}
  n = 0
  for node in model.graph.node:
    if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
      continue
    beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
    if beta == 0.0 or not np.any(numpy_helper.to_array(inits[node.input[2]])):
      del node.input[2]
      n += 1
  used = {i for node in model.graph.node for i in node.input}
  keep = [t for t in model.graph.initializer if t.name in used]
  del model.graph.initializer[:]
  model.graph.initializer.extend(keep)
  return n


class _Reader:
  """onnxruntime CalibrationDataReader over images (N, H, W, C) float32, in batches."""

  def __init__(self, input_name: str, images: np.ndarray, batch: int):
    self._batches = [{input_name: np.ascontiguousarray(images[i:i + batch], np.float32)}
                     for i in range(0, len(images), batch)]
    self._it = iter(self._batches)

  def get_next(self):
    return next(self._it, None)

  def rewind(self):
    self._it = iter(self._batches)


def quantized_op_types(model, op_types: Sequence[str] = OP_TYPES) -> dict[str, int]:
  """{op type: count} of the nodes of a QDQ model (onnx.ModelProto) of `op_types` whose first
  two inputs (data and weight) are both DequantizeLinear outputs: the ops onnxruntime runs as
  integer kernels. (Other nodes that read a shared DequantizeLinear output, e.g. a residual Add
  next to a quantised Gemm, still compute in float32 and are not counted.)"""
  dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
  c = collections.Counter(n.op_type for n in model.graph.node
                          if n.op_type in op_types and len(n.input) >= 2
                          and n.input[0] in dq and n.input[1] in dq)
  return dict(sorted(c.items()))


_INTEGER_KERNELS = ("QGemm", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
                    "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul")


def integer_kernels(int8_path: str) -> dict[str, int]:
  """{kernel: count} of the integer kernels onnxruntime's CPU provider actually runs for a QDQ
  model after its graph optimisation (a Q/DQ pair it could not fuse stays a float op on
  dequantised values): read from the optimised graph onnxruntime writes at session creation."""
  onnx, ort = _ort()
  with tempfile.TemporaryDirectory() as tmp:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(int8_path, so, providers=["CPUExecutionProvider"])
    opt = onnx.load(so.optimized_model_filepath)
  c = collections.Counter(n.op_type for n in opt.graph.node if n.op_type in _INTEGER_KERNELS)
  return dict(sorted(c.items()))


def quantize(fp32_path: str, int8_path: str, calib_images: np.ndarray, *,
             op_types: Sequence[str] = OP_TYPES, method: str = "minmax", calib_batch: int = 32,
             preprocess: bool = True, log=print) -> dict:
  """Writes `int8_path`: static int8 QDQ quantisation of `fp32_path` (scheme: module docstring),
  activation ranges calibrated on calib_images (N, H, W, C) float32, fed `calib_batch` at a time
  to the model's single input.

  method: "minmax" (the activation's min / max over the images), "entropy" or "percentile"
  (onnxruntime's histogram calibrators). Returns {"file", "nodes", "nodes_fp32", "bytes",
  "bytes_fp32", "seconds", "format", "activations", "weights", "quantized_op_types" (op type ->
  count with Q/DQ inputs), "integer_kernels" (what onnxruntime fuses them into on this CPU:
  `integer_kernels`), "requested_op_types", "calibration" {"method", "images", "batch"},
  "preprocess" {"ran", "error"}, "gemm_bias_inputs_removed"}.
  """
  onnx, _ = _ort()
  from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                        quantize_static)
  from onnxruntime.quantization.shape_inference import quant_pre_process
  cal = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
         "percentile": CalibrationMethod.Percentile}
  if method not in cal:
    raise ValueError(f"calibration method={method!r}; allowed: {METHODS}")
  calib_images = np.asarray(calib_images, np.float32)
  if calib_images.ndim != 4 or not len(calib_images):
    raise ValueError(f"calib_images must be (N, H, W, C) with N >= 1; got {calib_images.shape}")
  t0 = time.time()
  fp32 = onnx.load(fp32_path)
  if len(fp32.graph.input) != 1:
    raise ValueError(f"{fp32_path} has {len(fp32.graph.input)} inputs; quantize() feeds one")
  input_name = fp32.graph.input[0].name
  pre = {"ran": False, "error": None}
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "pre.onnx")
    if preprocess:
      try:
        quant_pre_process(fp32_path, src)
        pre["ran"] = True
      except Exception as e:   # noqa: BLE001 - optional step: record why, quantise the raw graph
        pre["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        log(f"[evonas_jax] int8: quant_pre_process failed ({pre['error']}); quantising the "
            "graph without it")
    model = onnx.load(src) if pre["ran"] else fp32
    removed = _drop_zero_gemm_bias(model)
    onnx.save(model, os.path.join(tmp, "ready.onnx"))
    quantize_static(
        os.path.join(tmp, "ready.onnx"), int8_path, _Reader(input_name, calib_images, calib_batch),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
        op_types_to_quantize=list(op_types), calibrate_method=cal[method],
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
  q = onnx.load(int8_path)
  return {
      "file": os.path.basename(int8_path), "nodes": len(q.graph.node),
      "nodes_fp32": len(fp32.graph.node), "bytes": os.path.getsize(int8_path),
      "bytes_fp32": os.path.getsize(fp32_path), "seconds": round(time.time() - t0, 2),
      "format": "QDQ", "activations": "int8 per tensor, asymmetric (calibrated min/max)",
      "weights": "int8 per output channel, symmetric",
      "quantized_op_types": quantized_op_types(q, op_types),
      "integer_kernels": integer_kernels(int8_path),
      "requested_op_types": list(op_types),
      "calibration": {"method": method, "images": int(len(calib_images)),
                      "batch": int(calib_batch)},
      "preprocess": pre, "gemm_bias_inputs_removed": removed}


def evaluate_classification(session_or_path, images: np.ndarray, labels: np.ndarray,
                            batch: int = 100, threads: int = THREADS) -> float:
  """Top-1 accuracy of an ONNX classifier (first output: logits (B, K)) on images (N, H, W, C)
  float32 with labels (N,) int, `batch` images per run."""
  sess = _session(session_or_path, threads) if isinstance(session_or_path, str) else session_or_path
  name = sess.get_inputs()[0].name
  images, labels = np.asarray(images, np.float32), np.asarray(labels)
  if len(images) != len(labels) or not len(images):
    raise ValueError(f"images {images.shape} and labels {labels.shape} must be the same nonzero "
                     "length")
  correct = 0
  for i in range(0, len(images), batch):
    logits = sess.run(None, {name: images[i:i + batch]})[0]
    correct += int(np.sum(np.argmax(logits, -1) == labels[i:i + batch]))
  return correct / len(images)


def time_model(path: str, input_shape: Sequence[int], threads: int = THREADS,
               warmup: int = WARMUP, runs: int = RUNS) -> dict:
  """Latency of an ONNX model on this CPU (`evonas_jax.ort_latency.time_onnx`: fixed intra-op
  threads, inter-op 1, `warmup` untimed runs, then `runs` timed ones, a fixed seeded input of
  `input_shape`): {"p50_ms", "p90_ms", "mean_ms", "threads", "warmup", "runs", ...}."""
  _ort()
  from evonas_jax import ort_latency
  return ort_latency.time_onnx(path, tuple(input_shape), threads=threads, warmup=warmup,
                               runs=runs)


def validation_set(data_cfg, n: int, batch: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """The first min(n, split size) images of the data config's validation split, unaugmented and
  normalised as in training: (images (m, H, W, C) float32, labels (m,) int32)."""
  from evonas_jax import data as data_lib
  if n <= 0:
    raise ValueError(f"--int8_val_images={n} must be >= 1")
  images, labels, have = [], [], 0
  for b in data_lib.eval_iterator(data_cfg, "validation", min(batch, n)):
    keep = np.asarray(b["mask"]) > 0   # the padded last batch's filler rows
    images.append(np.asarray(b["image"])[keep])
    labels.append(np.asarray(b["label"])[keep])
    have += int(keep.sum())
    if have >= n:
      break
  return (np.concatenate(images)[:n].astype(np.float32),
          np.concatenate(labels)[:n].astype(np.int32))


def int8_artifact(folder: str, calib_images: np.ndarray, val_images: np.ndarray,
                  val_labels: np.ndarray, *, max_drop: float = DEFAULT_MAX_DROP,
                  fp32_file: str = "model.onnx", threads: int = THREADS, warmup: int = WARMUP,
                  runs: int = RUNS, log=print, **quantize_kw) -> dict:
  """Quantises folder/fp32_file into folder/model.int8.onnx (calibrated on calib_images
  (N, H, W, C) float32), evaluates both models' top-1 accuracy on val_images (M, H, W, C) /
  val_labels (M,), times both at batch 1, and returns the arch.json entry `artifacts.int8`:

    {file, metric: "accuracy", metric_fp32, metric_int8, drop (fp32 - int8), max_drop,
     status: "ok" | "rejected" (drop > max_drop), validation_images, latency_ms_fp32 {p50, p90},
     latency_ms_int8 {p50, p90}, speedup (fp32 p50 / int8 p50), threads, batch: 1,
     timing {warmup, runs, device}, calibration {method, images, batch, split},
     quantization {...: quantize()'s description}}

  A rejected model is still written (to inspect it) and a WARNING is logged; the caller decides
  what a rejection means (the export CLI exits non-zero unless --allow_int8_drop).
  """
  fp32 = os.path.join(folder, fp32_file)
  int8 = os.path.join(folder, INT8_FILE)
  desc = quantize(fp32, int8, calib_images, log=log, **quantize_kw)
  m32 = evaluate_classification(fp32, val_images, val_labels)
  m8 = evaluate_classification(int8, val_images, val_labels)
  shape = (1, *np.asarray(val_images).shape[1:])
  t32 = time_model(fp32, shape, threads, warmup, runs)
  t8 = time_model(int8, shape, threads, warmup, runs)
  drop = m32 - m8
  status = "ok" if drop <= max_drop else "rejected"
  calib = {**desc.pop("calibration"), "split": "train (augmented): the BN calibration images"}
  art = {
      "file": INT8_FILE, "metric": "accuracy", "metric_fp32": m32, "metric_int8": m8,
      "drop": drop, "max_drop": float(max_drop), "status": status,
      "validation_images": int(len(val_images)),
      "latency_ms_fp32": {"p50": t32["p50_ms"], "p90": t32["p90_ms"]},
      "latency_ms_int8": {"p50": t8["p50_ms"], "p90": t8["p90_ms"]},
      "speedup": t32["p50_ms"] / t8["p50_ms"], "threads": int(threads), "batch": 1,
      "timing": {"warmup": int(warmup), "runs": int(runs), "device": _device()},
      "calibration": calib, "quantization": desc}
  log(f"[evonas_jax] int8: accuracy fp32 {m32:.4f} -> int8 {m8:.4f} (drop {drop:+.4f}, max "
      f"{max_drop}) on {len(val_images)} validation images; batch-1 p50 "
      f"{t32['p50_ms']:.3f} -> {t8['p50_ms']:.3f} ms ({art['speedup']:.2f}x, {threads} thread)")
  if status == "rejected":
    log(f"[evonas_jax] WARNING: int8 model REJECTED: it loses {drop:.4f} accuracy > "
        f"--int8_max_drop={max_drop}; {INT8_FILE} is written for inspection only, do not deploy "
        "it (arch.json artifacts.int8.status = \"rejected\")")
  return art


def _device() -> str:
  from evonas_jax import ort_latency
  return ort_latency.device_string()


def summary_line(a: dict) -> str:
  """One line for the export summary."""
  head = "REJECTED" if a["status"] == "rejected" else "ok"
  return (f"{a['file']} {a['quantization']['bytes'] / 1e3:.1f} KB int8 [{head}]: accuracy "
          f"{a['metric_fp32']:.4f} -> {a['metric_int8']:.4f} (drop {a['drop']:+.4f}, max "
          f"{a['max_drop']}) on {a['validation_images']} val images; batch-1 p50 "
          f"{a['latency_ms_fp32']['p50']:.3f} -> {a['latency_ms_int8']['p50']:.3f} ms "
          f"({a['speedup']:.2f}x, {a['threads']} thread)")
