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
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import Sequence

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
                    variables=None) -> float:
  """Median latency (ms) of the standalone (sliced) network of `arch` on `device`.

  image_shape: (H, W, C). variables: supernet variables to slice (default: a random supernet).
  """
  image_shape = tuple(int(s) for s in image_shape)
  if variables is None:
    variables = _random_supernet(space, num_classes, image_shape)
  dev = _device(device)
  net = subnet_model(space, arch, num_classes)
  sub = jax.device_put(extract_subnet(variables, space, arch), dev)
  x = jax.device_put(jnp.zeros((batch, *image_shape), jnp.float32), dev)
  return _time_fn(_jit(net), (sub, x), warmup, runs)


# --------------------------------------------------------------------------- lookup table
class _MixerHalf(nn.Module):
  """x (B, H, W, C) -> x + cpe1; + mixer(LN(x)): the first residual half of a block."""
  mixer: str
  heads: int
  d_inner: int
  d_state: int

  @nn.compact
  def __call__(self, x):
    x = x + DWConv(x.shape[-1], name="cpe1")(x)
    return x + MIXERS[self.mixer](self.heads, self.d_inner, self.d_state, name="mixer")(
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


class LatencyTable:
  """Per-op latency table (ms). predict(arch) = stem + downsamples + head + sum over active
  blocks of (mixer half + MLP half)."""

  def __init__(self, entries: dict, meta: dict):
    self.entries = entries   # {"stem": ms, "downsample1": ms, ..., "head": ms,
    self.meta = meta         #  "stage0": {"mixer": {key: ms}, "mlp": {hidden: ms}}, ...}

  @classmethod
  def build(cls, space: SearchSpace, num_classes: int, image_shape, *, batch: int = 1,
            warmup: int = 10, runs: int = 30, device=None, progress: bool = True,
            before_timing=None) -> "LatencyTable":
    """Measures every op once on `device` (each op is jitted and compiled separately).

    before_timing: optional callable run after all ops are compiled, before any is timed.
    """
    from tqdm.auto import tqdm
    image_shape = tuple(int(s) for s in image_shape)
    dev = _device(device)
    shapes = _stage_shapes(space, image_shape)
    ops = [("stem", Stem(space.dims[0]), (batch, *image_shape))]
    for s in range(1, space.num_stages):
      ops.append((f"downsample{s}", PatchMerging(space.dims[s]),
                  (batch, *shapes[s - 1], space.dims[s - 1])))
    ops.append(("head", _Head(num_classes), (batch, *shapes[-1], space.dims[-1])))
    for s, c in enumerate(space.dims):
      x_shape = (batch, *shapes[s], c)
      for key, t, d_inner, d_state in _mixer_keys(space, s):
        ops.append((f"stage{s}/mixer/{key}", _MixerHalf(t, space.heads[s], d_inner, d_state), x_shape))
      for r in space.mlp_choices:
        ops.append((f"stage{s}/mlp/{int(c * r)}", _MlpHalf(int(c * r)), x_shape))
    entries: dict = {f"stage{s}": {"mixer": {}, "mlp": {}} for s in range(space.num_stages)}
    t0 = time.perf_counter()
    # Phase 1: compile every op (AOT). Phase 2: time them. Separating the two lets a caller
    # overlap other compiles with phase 1 and keep the machine quiet during phase 2
    # (`before_timing` is called in between, e.g. to join a compile thread).
    compiled = []
    for name, module, shape in tqdm(ops, desc="latency table: compile", unit="op",
                                    disable=not progress, dynamic_ncols=True, mininterval=2.0):
      x = jax.device_put(jnp.zeros(shape, jnp.float32), dev)
      # Latency does not depend on weight values: shapes from eval_shape, filled with a small
      # constant, save an init compile per op (compiles dominate the build on CPU).
      shapes = jax.eval_shape(module.init, jax.random.key(0), x)
      variables = jax.device_put(jax.tree.map(lambda a: jnp.full(a.shape, 0.02, a.dtype), shapes), dev)
      # Block halves run as _LOOP chained applications inside one compiled loop: per application
      # and without dispatch, as a network runs its blocks back to back inside one call.
      looped = isinstance(module, (_MixerHalf, _MlpHalf))
      fn = _looped(module, _LOOP) if looped else _jit(module)
      compiled.append((name, fn.lower(variables, x).compile(), (variables, x), _LOOP if looped else 1))
    if before_timing is not None:
      before_timing()
    # Every standalone call pays one dispatch (tens of microseconds on CPU); the whole network
    # pays it once. Measure it with a trivial op and count it once in `predict`.
    x0 = jax.device_put(jnp.zeros((batch, *image_shape), jnp.float32), dev)
    entries["dispatch_overhead"] = _time_fn(_trivial, (x0,), warmup, runs)
    for name, fn, args, reps in tqdm(compiled, desc="latency table: time", unit="op",
                                     disable=not progress, dynamic_ncols=True, mininterval=2.0):
      ms = _time_fn(fn, args, warmup, runs) / reps
      parts = name.split("/", 2)
      if len(parts) == 1:
        entries[name] = ms
      else:
        entries[parts[0]][parts[1]][parts[2]] = ms
    meta = {"device": device_name(dev), "space": space.name, "preset": space.preset,
            "dims": list(space.dims), "max_depths": list(space.max_depths),
            "num_classes": num_classes, "image_shape": list(image_shape), "batch": batch,
            "warmup": warmup, "runs": runs, "num_ops": len(ops),
            "build_seconds": time.perf_counter() - t0}
    return cls(entries, meta)

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
    want = {"space": space.name, "preset": space.preset, "dims": list(space.dims),
            "max_depths": list(space.max_depths), "num_classes": num_classes,
            "image_shape": [int(s) for s in image_shape]}
    diff = {k: (self.meta.get(k), v) for k, v in want.items() if self.meta.get(k) != v}
    if diff:
      raise ValueError(f"latency table does not match (field: (table, wanted)): {diff}")

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"meta": self.meta, "entries": self.entries}, f, indent=1)

  @classmethod
  def load(cls, path: str) -> "LatencyTable":
    with open(path) as f:
      d = json.load(f)
    return cls(d["entries"], d["meta"])


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
                   progress: bool = True) -> dict:
  """Spearman rho (and mean abs % error) of the table against measured sliced latency.

  archs: the archs to check (default: `num_archs` random archs of the space, seeded).
  """
  from tqdm.auto import tqdm
  if archs is None:
    archs = [space.decode(g) for g in space.sample(seed, num_archs)]
  pred, meas = [], []
  for a in tqdm(archs, desc="latency check", unit="arch", disable=not progress,
                dynamic_ncols=True, mininterval=2.0):
    pred.append(table.predict(a))
    meas.append(measure_latency(space, a, num_classes, image_shape, batch=table.meta["batch"],
                                warmup=warmup, runs=runs, device=device, variables=variables))
  pred, meas = np.array(pred), np.array(meas)
  return {"spearman_rho": spearman(pred, meas) if len(archs) > 2 else float("nan"),
          "mean_abs_pct_error": float(np.mean(np.abs(pred - meas) / meas) * 100),
          "num_archs": len(archs), "predicted_ms": pred.tolist(), "measured_ms": meas.tolist(),
          "device": table.meta["device"]}
