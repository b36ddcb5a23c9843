"""Latency: on-device measurement of sliced subnets and an OFA-style lookup-table predictor.

* `measure_latency` times the real, small network (sliced mode: `subnet_model` + `extract_subnet`,
  done once outside the timed region): `warmup` calls, then the median of `runs` calls, each
  ended by `block_until_ready` (research §4: batch 1, 30 warm-up, 50 timed; the official code took
  the mean, we take the median, which is robust to the scheduler noise of shared machines).
* `LatencyTable` sums per-op latencies measured once per device: the stem, each downsample, the
  head, and per stage the block's two residual halves, each a standalone jitted op at that stage's
  resolution:
    mixer half: x + cpe1(x); x + mixer(LN(x))        keyed by (block type, d_inner, d_state)
    MLP half:   x + cpe2(x); x + MLP(LN(x))          keyed by hidden width
  A block costs mixer half + MLP half; skipped blocks cost nothing. Block halves are timed as
  8 chained applications inside one compiled loop (per application, no dispatch); the stem,
  downsamples and head are timed per call, and one dispatch overhead (a timed trivial op) is
  subtracted from each of them and added once for the network. Sums of isolated ops miss
  fusion across op boundaries and per-call dispatch overhead, so the table ranks archs rather than
  predicting absolute times; `validate_table` reports the Spearman rho against measurement.

Backends (`backend=` of `LatencyTable.build`, `measure_latency`, `validate_table`; a table's
meta["backend"]): "xla" times the jitted JAX programs on a JAX device; "onnxruntime" times the
ONNX models the export ships on this machine's CPU (`evonas_jax.ort_latency.time_onnx`, fixed
intra-op threads): the table's ops are converted one model per op (`evonas_jax.latency_bundle`,
block halves as 8 chained applications in one graph, divided by 8, like the XLA loop) and the
measured network is the whole sliced subnet converted to ONNX. Both backends time the same op
list (`table_ops`). A table for another device is built there from a bundle by a standalone
numpy + onnxruntime script (`evonas_jax/tools/build_device_table.py`) and loaded with
`LatencyTable.load`.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.nn import MIXERS, init_supernet
from evonas_jax.nn.layers import Dense, DWConv, LayerNorm
from evonas_jax.nn.mlp import Mlp
from evonas_jax.nn.stem import PatchMerging, Stem
from evonas_jax.nn.supernet import extract_subnet, subnet_model
from evonas_jax.space import Arch, SearchSpace


def _time_fn(fn, args, warmup: int, runs: int) -> float:
  """Median wall time of fn(*args) in ms (the first call compiles and is not timed)."""
  jax.block_until_ready(fn(*args))
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t)
  return float(np.median(ts) * 1e3)


@functools.lru_cache(maxsize=512)
def _jit(module, method: str = "apply"):
  # Linen modules hash by value: the same op or subnet is compiled once per process.
  return jax.jit(getattr(module, method))


_LOOP = 8   # applications per timed call for block halves


@functools.lru_cache(maxsize=512)
def _looped(module, n: int):
  """jit(v, x -> module applied n times in a chain): shape-preserving ops only."""
  return jax.jit(lambda v, x: jax.lax.fori_loop(0, n, lambda i, y: module.apply(v, y), x))


@jax.jit
def _trivial(x):
  return x + 1.0


def _device(device):
  return jax.devices()[0] if device is None else device


def device_name(device=None) -> str:
  d = _device(device)
  kind = getattr(d, "device_kind", d.platform)
  if d.platform == "cpu":
    kind = f"{kind} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
  return f"{d.platform}:{kind}"


@functools.lru_cache(maxsize=4)
def _random_supernet(space: SearchSpace, num_classes: int, image_shape: tuple) -> dict:
  # Latency does not depend on weight values; a random supernet stands in when none is given.
  return init_supernet(space, num_classes, jax.random.key(0), image_shape)[1]


def measure_latency(space: SearchSpace, arch: Arch, num_classes: int, image_shape, *,
                    batch: int = 1, warmup: int = 30, runs: int = 50, device=None,
                    variables=None, backend: str = "xla", threads: int = 1) -> float:
  """Median latency (ms) of the standalone (sliced) network of `arch`.

  image_shape: (H, W, C). variables: supernet variables to slice (default: a random supernet).
  backend "xla": the jitted network on `device` (default: the first JAX device);
  "onnxruntime": the network converted to ONNX (jax2onnx, pure-JAX "reference" selective scan,
  as `evonas_jax.export` writes it) and run on this machine's CPU with `threads` intra-op
  threads (`evonas_jax.ort_latency.time_onnx`, its p50); `device` is ignored.
  """
  image_shape = tuple(int(s) for s in image_shape)
  if variables is None:
    variables = _random_supernet(space, num_classes, image_shape)
  if check_backend(backend) == "onnxruntime":
    return measure_onnx_latency(space, arch, num_classes, image_shape, batch=batch,
                                warmup=warmup, runs=runs, variables=variables,
                                threads=threads)["p50_ms"]
  dev = _device(device)
  net = subnet_model(space, arch, num_classes)
  sub = jax.device_put(extract_subnet(variables, space, arch), dev)
  x = jax.device_put(jnp.zeros((batch, *image_shape), jnp.float32), dev)
  return _time_fn(_jit(net), (sub, x), warmup, runs)


def measure_onnx_latency(space: SearchSpace, arch: Arch, num_classes: int, image_shape, *,
                         batch: int = 1, warmup: int = 30, runs: int = 50, variables=None,
                         threads: int = 1, check_images=None) -> dict:
  """`time_onnx`'s dict for the sliced network of `arch` converted to ONNX, plus
  "convert_seconds" (the jax2onnx conversion) and "nodes" (ONNX graph size).

  image_shape: (H, W, C); the ONNX input is (batch, H, W, C) float32.
  check_images: optional (N, H, W, C) float32; then "max_abs_diff" and "max_abs_jax" compare
  the ONNX logits with the JAX network's on them (a conversion check, outside the timing)."""
  import tempfile
  from evonas_jax import export_onnx, ort_latency
  image_shape = tuple(int(s) for s in image_shape)
  if variables is None:
    variables = _random_supernet(space, num_classes, image_shape)
  # As the ONNX export does: the pure-JAX scan (an ONNX Loop), sliced weights as initializers.
  net = subnet_model(space, arch, num_classes, scan_backend="reference")
  sub = jax.device_get(extract_subnet(variables, space, arch))
  with tempfile.TemporaryDirectory(prefix="evonas_latency_") as tmp:
    path = os.path.join(tmp, "subnet.onnx")
    # export_onnx.convert (the export's own conversion) runs under onnx_patches.fast_jax2onnx:
    # ~6x faster, and each conversion in a process gives the graph of the first one.
    desc = export_onnx.convert(lambda x: net.apply(sub, x), image_shape, path, ["logits"])
    r = ort_latency.time_onnx(path, (batch, *image_shape), threads=threads, warmup=warmup,
                              runs=runs)
    r.update(convert_seconds=desc["seconds"], nodes=desc["nodes"])
    if check_images is not None:
      imgs = np.asarray(check_images, np.float32)
      got = export_onnx.run(ort_latency.session(path, threads), imgs)["logits"]
      want = np.asarray(_jit(net)(sub, imgs))
      r.update(max_abs_diff=float(np.max(np.abs(got - want))),
               max_abs_jax=float(np.max(np.abs(want))))
  return r


# --------------------------------------------------------------------------- lookup table
class _MixerHalf(nn.Module):
  """x (B, H, W, C) -> x + cpe1; + mixer(LN(x)): the first residual half of a block.

  scan_backend: the SS2D selective scan's backend ("auto" for XLA timing; ONNX conversion
  needs the pure-JAX "reference" scan). Other mixers ignore it."""
  mixer: str
  heads: int
  d_inner: int
  d_state: int
  scan_backend: str = "auto"

  @nn.compact
  def __call__(self, x):
    x = x + DWConv(x.shape[-1], name="cpe1")(x)
    kw = {"scan_backend": self.scan_backend} if self.mixer == "ss2d" else {}
    return x + MIXERS[self.mixer](self.heads, self.d_inner, self.d_state, name="mixer", **kw)(
        LayerNorm(name="norm1")(x))


class _MlpHalf(nn.Module):
  """x (B, H, W, C) -> x + cpe2; + MLP(LN(x)): the second residual half of a block."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = x + DWConv(x.shape[-1], name="cpe2")(x)
    return x + Mlp(self.hidden, name="mlp")(LayerNorm(name="norm2")(x))


class _Head(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return Dense(self.num_classes, name="head")(LayerNorm(name="norm")(x).mean(axis=(1, 2)))


def _stage_shapes(space: SearchSpace, image_shape) -> list[tuple[int, int]]:
  h, w = image_shape[:2]
  h, w = -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2)   # the stem: two stride-2 convs
  out = []
  for s in range(space.num_stages):
    if s > 0:
      h, w = -(-h // 2), -(-w // 2)
    out.append((h, w))
  return out


def _mixer_keys(space: SearchSpace, s: int) -> list[tuple[str, str, int, int]]:
  """(key, type, d_inner, d_state) for every mixer a stage can hold."""
  c, out = space.dims[s], []
  for t in space.stage_types(s):
    if t == "attention":
      out.append(("attention", t, 0, 0))
      continue
    if s in space.ssm_stages:
      combos = [(e, n) for e in space.expand_choices for n in space.d_state_choices]
    else:
      combos = [tuple(space.stage4_ssm)]
    out += [(f"{t}/{int(c * e)}/{n}", t, int(c * e), n) for e, n in combos]
  return out


BACKENDS = ("xla", "onnxruntime")   # what times the table's ops and the measured networks


def check_backend(backend: str, field: str = "backend") -> str:
  """backend, or ValueError naming `field` and the allowed values."""
  if backend not in BACKENDS:
    raise ValueError(f"{field}={backend!r} is not one of {BACKENDS} (xla: jitted JAX programs "
                     "on a JAX device; onnxruntime: ONNX models on this machine's CPU)")
  return backend


class TableOp(NamedTuple):
  """One timed op of the lookup table.

  key: the table key ("stem", "downsample{s}", "head", "stage{s}/mixer/{mixer key}",
    "stage{s}/mlp/{hidden}"); module: the flax module, applied as module.apply(variables, x);
  input_shape: (batch, H, W, C) of x; reps: chained applications per timed call (block halves
  keep their shape and run _LOOP times back to back; the result is divided by reps)."""
  key: str
  module: nn.Module
  input_shape: tuple
  reps: int


def table_ops(space: SearchSpace, num_classes: int, image_shape, *, batch: int = 1,
              scan_backend: str = "auto") -> list[TableOp]:
  """Every op a LatencyTable times, in table order: the stem, each downsample, the head, then
  per stage every mixer half and every MLP half (both backends time exactly this list).

  image_shape: (H, W, C) of one input image. scan_backend: see _MixerHalf."""
  image_shape = tuple(int(s) for s in image_shape)
  shapes = _stage_shapes(space, image_shape)
  ops = [TableOp("stem", Stem(space.dims[0]), (batch, *image_shape), 1)]
  for s in range(1, space.num_stages):
    ops.append(TableOp(f"downsample{s}", PatchMerging(space.dims[s]),
                       (batch, *shapes[s - 1], space.dims[s - 1]), 1))
  ops.append(TableOp("head", _Head(num_classes), (batch, *shapes[-1], space.dims[-1]), 1))
  for s, c in enumerate(space.dims):
    x_shape = (batch, *shapes[s], c)
    for key, t, d_inner, d_state in _mixer_keys(space, s):
      ops.append(TableOp(f"stage{s}/mixer/{key}",
                         _MixerHalf(t, space.heads[s], d_inner, d_state, scan_backend),
                         x_shape, _LOOP))
    for r in space.mlp_choices:
      ops.append(TableOp(f"stage{s}/mlp/{int(c * r)}", _MlpHalf(int(c * r)), x_shape, _LOOP))
  return ops


def space_meta(space: SearchSpace, num_classes: int, image_shape, batch: int) -> dict:
  """The fields a table is built for (check_compatible compares them)."""
  return {"space": space.name, "preset": space.preset, "dims": list(space.dims),
          "max_depths": list(space.max_depths), "num_classes": int(num_classes),
          "image_shape": [int(s) for s in image_shape], "batch": int(batch)}


def current_device(backend: str = "xla", device=None) -> str:
  """This machine's device line for `backend`, in the form a table's meta["device"] has."""
  if check_backend(backend) == "onnxruntime":
    from evonas_jax import ort_latency
    return ort_latency.device_string()
  return device_name(device)


class LatencyTable:
  """Per-op latency table (ms). predict(arch) = stem + downsamples + head + sum over active
  blocks of (mixer half + MLP half)."""

  def __init__(self, entries: dict, meta: dict):
    self.entries = entries   # {"stem": ms, "downsample1": ms, ..., "head": ms,
    self.meta = meta         #  "stage0": {"mixer": {key: ms}, "mlp": {hidden: ms}}, ...}

  @property
  def backend(self) -> str:
    # Tables written before the backend choice existed were all timed with XLA.
    return self.meta.get("backend", "xla")

  @classmethod
  def build(cls, space: SearchSpace, num_classes: int, image_shape, *, batch: int = 1,
            warmup: int = 10, runs: int = 30, device=None, progress: bool = True,
            before_timing=None, backend: str = "xla", threads: int = 1) -> "LatencyTable":
    """Measures every op of `table_ops` once.

    backend "xla": each op is jitted and compiled separately and timed on `device` (default:
      the first JAX device). "onnxruntime": each op is converted to ONNX (a latency bundle in a
      temporary folder, `evonas_jax.latency_bundle.write_bundle`) and timed on this machine's
      CPU with `threads` intra-op threads by the same code the standalone device script runs
      (`evonas_jax/tools/build_device_table.py`); `device` is ignored.
    before_timing: optional callable run after all ops are compiled (converted), before any is
      timed. meta records "backend", "compile_seconds" (XLA compiles or ONNX conversions) and
      "timing_seconds".
    """
    if check_backend(backend) == "onnxruntime":
      return cls._build_onnxruntime(space, num_classes, image_shape, batch=batch,
                                    warmup=warmup, runs=runs, progress=progress,
                                    before_timing=before_timing, threads=threads)
    from tqdm.auto import tqdm
    image_shape = tuple(int(s) for s in image_shape)
    dev = _device(device)
    ops = table_ops(space, num_classes, image_shape, batch=batch)
    entries: dict = {f"stage{s}": {"mixer": {}, "mlp": {}} for s in range(space.num_stages)}
    t0 = time.perf_counter()
    # Phase 1: compile every op (AOT). Phase 2: time them. Separating the two lets a caller
    # overlap other compiles with phase 1 and keep the machine quiet during phase 2
    # (`before_timing` is called in between, e.g. to join a compile thread).
    compiled = []
    for op in tqdm(ops, desc="latency table: compile", unit="op",
                   disable=not progress, dynamic_ncols=True, mininterval=2.0):
      x = jax.device_put(jnp.zeros(op.input_shape, jnp.float32), dev)
      # Latency does not depend on weight values: shapes from eval_shape, filled with a small
      # constant, save an init compile per op (compiles dominate the build on CPU).
      shapes = jax.eval_shape(op.module.init, jax.random.key(0), x)
      variables = jax.device_put(jax.tree.map(lambda a: jnp.full(a.shape, 0.02, a.dtype), shapes), dev)
      # Block halves run as _LOOP chained applications inside one compiled loop: per application
      # and without dispatch, as a network runs its blocks back to back inside one call.
      fn = _looped(op.module, op.reps) if op.reps > 1 else _jit(op.module)
      compiled.append((op.key, fn.lower(variables, x).compile(), (variables, x), op.reps))
    t_compiled = time.perf_counter()
    if before_timing is not None:
      before_timing()
    t1 = time.perf_counter()
    # Every standalone call pays one dispatch (tens of microseconds on CPU); the whole network
    # pays it once. Measure it with a trivial op and count it once in `predict`.
    x0 = jax.device_put(jnp.zeros((batch, *image_shape), jnp.float32), dev)
    entries["dispatch_overhead"] = _time_fn(_trivial, (x0,), warmup, runs)
    for name, fn, args, reps in tqdm(compiled, desc="latency table: time", unit="op",
                                     disable=not progress, dynamic_ncols=True, mininterval=2.0):
      _put_entry(entries, name, _time_fn(fn, args, warmup, runs) / reps)
    meta = {"backend": "xla", "device": device_name(dev),
            **space_meta(space, num_classes, image_shape, batch),
            "warmup": warmup, "runs": runs, "statistic": "p50", "num_ops": len(ops),
            "compile_seconds": t_compiled - t0, "timing_seconds": time.perf_counter() - t1,
            "build_seconds": time.perf_counter() - t0}
    return cls(entries, meta)

  @classmethod
  def _build_onnxruntime(cls, space, num_classes, image_shape, *, batch, warmup, runs,
                         progress, before_timing, threads) -> "LatencyTable":
    import tempfile
    from evonas_jax import latency_bundle
    from evonas_jax.tools import build_device_table
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evonas_latency_bundle_") as tmp:
      manifest = latency_bundle.write_bundle(space, num_classes, image_shape, tmp, batch=batch,
                                             progress=progress)
      t_converted = time.perf_counter()
      if before_timing is not None:
        before_timing()
      d = build_device_table.build_table(tmp, threads=threads, warmup=warmup, runs=runs,
                                         progress=False)
    meta = d["meta"]
    meta["compile_seconds"] = t_converted - t0   # the ONNX conversions (jax2onnx)
    meta["convert_seconds_per_op"] = manifest["convert_seconds_per_op"]
    meta["build_seconds"] = time.perf_counter() - t0
    return cls(d["entries"], meta)

  def predict(self, arch: Arch) -> float:
    e, n = self.entries, len(arch.depth)
    o = e.get("dispatch_overhead", 0.0)
    net = lambda ms: max(ms - o, 0.0)   # an op's own time, without its dispatch
    total = o + net(e["stem"]) + net(e["head"]) + sum(net(e[f"downsample{s}"]) for s in range(1, n))
    # Block halves were timed inside a compiled loop: already without dispatch.
    for s in range(n):
      k = arch.depth_counts[s]
      if k:
        st = e[f"stage{s}"]
        hidden = str(int(self.meta["dims"][s] * arch.mlp_ratio[s]))
        mk = _mixer_key_from_meta(arch, s, self.meta)
        try:
          total += k * (st["mixer"][mk] + st["mlp"][hidden])
        except KeyError as err:
          raise KeyError(f"latency table has no entry {err} for stage {s + 1} of {arch}; it was "
                         f"built for {self.meta['space']}/{self.meta['preset']}") from None
    return float(total)

  def check_compatible(self, space: SearchSpace, num_classes: int, image_shape) -> None:
    """ValueError naming every field (space, preset, dims, max_depths, num_classes,
    image_shape) in which the table differs from what it is wanted for."""
    want = space_meta(space, num_classes, image_shape, 1)
    want.pop("batch")
    diff = {k: (self.meta.get(k), v) for k, v in want.items() if self.meta.get(k) != v}
    if diff:
      raise ValueError(f"latency table does not match (field: (table, wanted)): {diff}")

  def save(self, path: str) -> None:
    from evonas_jax.workdir import write_json_atomic   # atomic: a killed search re-reads it
    write_json_atomic(path, {"meta": self.meta, "entries": self.entries}, indent=1)

  @classmethod
  def load(cls, path: str) -> "LatencyTable":
    with open(path) as f:
      d = json.load(f)
    return cls(d["entries"], d["meta"])


def _put_entry(entries: dict, key: str, ms: float) -> None:
  # "stem" -> entries["stem"]; "stage0/mixer/vssd/16/16" -> entries["stage0"]["mixer"]["vssd/16/16"]
  parts = key.split("/", 2)
  if len(parts) == 1:
    entries[key] = ms
  else:
    entries[parts[0]][parts[1]][parts[2]] = ms


def _mixer_key_from_meta(arch: Arch, s: int, meta: dict) -> str:
  t = arch.block_type[s]
  if t == "attention":
    return "attention"
  return f"{t}/{int(meta['dims'][s] * arch.expand[s])}/{arch.d_state[s]}"


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 0..n-1, ties get their average rank."""
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x), np.float64)
  r[order] = np.arange(len(x))
  for v in np.unique(x):
    tie = x == v
    r[tie] = r[tie].mean()
  return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman rank correlation (Pearson correlation of tie-averaged ranks)."""
  ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
  return float((ra * rb).sum() / den) if den > 0 else float("nan")


def validate_table(table: LatencyTable, space: SearchSpace, num_classes: int, image_shape, *,
                   num_archs: int = 10, seed: int = 0, archs: Sequence[Arch] | None = None,
                   warmup: int = 10, runs: int = 30, device=None, variables=None,
                   progress: bool = True, backend: str | None = None, threads: int = 1) -> dict:
  """Spearman rho (and mean abs % error) of the table against measured sliced latency.

  archs: the archs to check (default: `num_archs` random archs of the space, seeded).
  backend: what measures the networks (default: the table's own backend).
  """
  backend = table.backend if backend is None else check_backend(backend)
  from tqdm.auto import tqdm
  if archs is None:
    archs = [space.decode(g) for g in space.sample(seed, num_archs)]
  pred, meas = [], []
  for a in tqdm(archs, desc="latency check", unit="arch", disable=not progress,
                dynamic_ncols=True, mininterval=2.0):
    pred.append(table.predict(a))
    meas.append(measure_latency(space, a, num_classes, image_shape, batch=table.meta["batch"],
                                warmup=warmup, runs=runs, device=device, variables=variables,
                                backend=backend, threads=threads))
  pred, meas = np.array(pred), np.array(meas)
  return {"spearman_rho": spearman(pred, meas) if len(archs) > 2 else float("nan"),
          "mean_abs_pct_error": float(np.mean(np.abs(pred - meas) / meas) * 100),
          "num_archs": len(archs), "predicted_ms": pred.tolist(), "measured_ms": meas.tolist(),
          "device": table.meta["device"], "backend": backend}
