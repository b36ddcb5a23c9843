"""onnxruntime latency timing that runs on the target device itself (needs numpy + onnxruntime).

    time_onnx(model, input_shape, threads=1, warmup=10, runs=30)
        -> {"p50_ms", "p90_ms", "mean_ms", "threads", "affinity", "warmup", "runs", "ort_version"}
    device_description() -> {"machine", "processor", "system", "cpu_count", "affinity",
                             "ort_providers", ...};  device_string(info) -> one line of it

This module is deliberately standalone: it imports only the standard library, numpy and
onnxruntime (no jax, nothing of evonas_jax), so it can be copied next to
`build_device_table.py` into a latency bundle and run on an edge device that has only those two
packages. The host-side table builder (`evonas_jax.latency.LatencyTable.build(...,
backend="onnxruntime")`) times with this very function, so host and device tables differ only in
the machine.

Protocol: one InferenceSession per model on the CPU execution provider with a fixed intra-op
thread count, one inter-op thread and sequential execution (so the timing does not depend on how
many cores happen to be idle); a fixed input of the model's shape, batch 1 by default; `warmup`
untimed calls, then `runs` calls each timed with `time.perf_counter` around `session.run`.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Sequence

import numpy as np
import onnxruntime as ort


def session(model, threads: int = 1) -> "ort.InferenceSession":
  """An InferenceSession on the CPU provider: `threads` intra-op threads, 1 inter-op thread,
  sequential execution, full graph optimisation. model: a path to a .onnx file or its bytes."""
  if not isinstance(threads, int) or threads < 1:
    raise ValueError(f"threads={threads!r} must be an int >= 1 (intra-op thread count)")
  so = ort.SessionOptions()
  so.intra_op_num_threads = threads
  so.inter_op_num_threads = 1
  so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  # Quiet: onnxruntime logs shape-inference notes at warning level for converted graphs.
  so.log_severity_level = 3
  if isinstance(model, (str, os.PathLike)):
    model = os.fspath(model)
  return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _affinity() -> list[int] | None:
  # The CPUs this process may run on (Linux); None where the OS does not say.
  try:
    return sorted(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return None


def _input_shape(sess, input_shape: Sequence[int]) -> tuple[int, ...]:
  """The full input shape: `input_shape` as given when it has the model input's rank, else
  (1, *input_shape) (a per-image shape: batch 1)."""
  rank = len(sess.get_inputs()[0].shape)
  shape = tuple(int(s) for s in input_shape)
  if len(shape) == rank - 1:
    shape = (1, *shape)
  if len(shape) != rank:
    raise ValueError(f"input_shape={tuple(input_shape)} does not fit the model input "
                     f"{sess.get_inputs()[0].name!r} of shape {sess.get_inputs()[0].shape} "
                     f"(pass the full shape, or the shape without the batch dimension)")
  return shape


def time_onnx(model, input_shape: Sequence[int], *, threads: int = 1, warmup: int = 10,
              runs: int = 30, seed: int = 0) -> dict:
  """Latency of one ONNX model on this machine's CPU (onnxruntime).

  model: path to a .onnx file, or its serialized bytes; one float32 input, any outputs.
  input_shape: the full input shape, e.g. (1, H, W, C) for batch 1, or the shape without the
    batch dimension (then batch 1 is used).
  Returns {"p50_ms", "p90_ms", "mean_ms" (of the `runs` timed calls), "threads", "affinity"
  (sorted list of allowed CPU ids, or None), "warmup", "runs", "ort_version",
  "session_seconds" (session creation incl. graph optimisation, not timed in the latencies)}.
  """
  if not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f"warmup={warmup!r} must be an int >= 0")
  if not isinstance(runs, int) or runs < 1:
    raise ValueError(f"runs={runs!r} must be an int >= 1")
  t0 = time.perf_counter()
  sess = session(model, threads)
  session_seconds = time.perf_counter() - t0
  shape = _input_shape(sess, input_shape)
  # Values do not change the latency of these float graphs; a seeded normal input avoids any
  # all-zeros fast path (e.g. denormal-free multiplications by zero).
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  feed = {sess.get_inputs()[0].name: x}
  names = [o.name for o in sess.get_outputs()]
  for _ in range(warmup):
    sess.run(names, feed)
  ts = np.empty(runs, np.float64)
  for i in range(runs):
    t = time.perf_counter()
    sess.run(names, feed)
    ts[i] = time.perf_counter() - t
  ts *= 1e3
  return {"p50_ms": float(np.percentile(ts, 50)), "p90_ms": float(np.percentile(ts, 90)),
          "mean_ms": float(ts.mean()), "threads": int(threads), "affinity": _affinity(),
          "warmup": int(warmup), "runs": int(runs), "ort_version": ort.__version__,
          "session_seconds": round(session_seconds, 4)}


def _cpu_model() -> str:
  # platform.processor() is often empty or just "x86_64" on Linux; /proc/cpuinfo names the CPU.
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith(("model name", "hardware", "cpu model")):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or ""


def device_description() -> dict:
  """What the latencies of this machine are of: {"machine", "processor", "cpu_model",
  "system", "cpu_count", "affinity", "ort_version", "ort_providers"}."""
  aff = _affinity()
  return {"machine": platform.machine(), "processor": platform.processor(),
          "cpu_model": _cpu_model(), "system": platform.system(),
          "cpu_count": os.cpu_count(), "affinity": aff,
          "ort_version": ort.__version__, "ort_providers": list(ort.get_available_providers())}


def device_string(info: dict | None = None) -> str:
  """One line naming the machine, e.g. "onnxruntime-cpu:x86_64 (Intel Xeon ..., 2 cpus)";
  two tables of the same machine and CPU set give the same line."""
  info = device_description() if info is None else info
  cpus = len(info["affinity"]) if info.get("affinity") else info.get("cpu_count")
  model = info.get("cpu_model") or info.get("processor") or "unknown cpu"
  return f"onnxruntime-cpu:{info.get('machine')} ({model}, {cpus} cpus)"
