"""Builds a latency lookup table on the device that will run the model (numpy + onnxruntime only).

    python build_device_table.py BUNDLE --out table.json [--threads 1 --warmup 10 --runs 30]

BUNDLE is a folder written on the host by `python -m evonas_jax.latency_bundle`:
    manifest.json        the search space the table is for, and the op list:
                         [{"key", "file", "input_shape" (full shape, batch first), "reps"}, ...]
    ops/*.onnx           one model per op (block halves hold `reps` chained applications)
    build_device_table.py, ort_latency.py   this script and its timing function
Every op is timed with `ort_latency.time_onnx` (median of `runs` calls after `warmup`), divided by
its `reps`, and written as a table JSON {"meta": {...}, "entries": {...}} that
`evonas_jax.latency.LatencyTable.load` reads: entries {"stem": ms, "downsample1": ms, ...,
"head": ms, "dispatch_overhead": ms, "stage0": {"mixer": {key: ms}, "mlp": {hidden: ms}}, ...};
meta carries "backend": "onnxruntime", "device" (a one-line description of this machine),
"device_info", "threads", the timing protocol and the manifest's space fields. Copy table.json
back to the host and pass it to the search as `--config.latency_table=table.json`.

The script needs neither jax nor evonas_jax: it loads `ort_latency.py` from its own folder (the
bundle) and only falls back to the installed `evonas_jax.ort_latency` when that file is absent.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))


def _ort_latency():
  """The timing module: ort_latency.py next to this script, else evonas_jax.ort_latency."""
  path = os.path.join(_HERE, "ort_latency.py")
  if os.path.exists(path):
    spec = importlib.util.spec_from_file_location("_bundle_ort_latency", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
  from evonas_jax import ort_latency   # inside the installed package (host-side builds)
  return ort_latency


# The manifest fields copied into the table's meta (LatencyTable.check_compatible compares them).
SPACE_FIELDS = ("space", "preset", "dims", "max_depths", "num_classes", "image_shape", "batch")


def load_manifest(bundle: str) -> dict:
  path = os.path.join(bundle, "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: BUNDLE must be a folder written by "
                            "`python -m evonas_jax.latency_bundle` (manifest.json + ops/)")
  with open(path) as f:
    m = json.load(f)
  if m.get("format") != "evonas_jax.latency_bundle/1":
    raise ValueError(f"{path}: format {m.get('format')!r} is not 'evonas_jax.latency_bundle/1'")
  return m


def build_table(bundle: str, *, threads: int = 1, warmup: int = 10, runs: int = 30,
                progress: bool = True) -> dict:
  """{"meta", "entries"}: every op of the bundle timed here (ms per application)."""
  ol = _ort_latency()
  m = load_manifest(bundle)
  t0 = time.perf_counter()
  entries: dict = {f"stage{s}": {"mixer": {}, "mlp": {}} for s in range(len(m["dims"]))}
  timing = None
  n = len(m["ops"])
  for i, op in enumerate(m["ops"]):
    r = ol.time_onnx(os.path.join(bundle, op["file"]), op["input_shape"], threads=threads,
                     warmup=warmup, runs=runs)
    timing = r
    # Block halves hold `reps` chained applications in one graph: per application, without
    # the per-call overhead, as a network runs its blocks back to back inside one call.
    ms = r["p50_ms"] / int(op.get("reps", 1))
    parts = op["key"].split("/", 2)
    if len(parts) == 1:
      entries[op["key"]] = ms
    else:
      entries[parts[0]][parts[1]][parts[2]] = ms
    if progress:
      print(f"[{i + 1:3d}/{n}] {op['key']:32s} {ms:9.4f} ms", file=sys.stderr, flush=True)
  info = ol.device_description()
  meta = {"backend": "onnxruntime", "device": ol.device_string(info), "device_info": info,
          "threads": int(threads), "affinity": timing["affinity"] if timing else None,
          "warmup": int(warmup), "runs": int(runs), "statistic": "p50",
          "ort_version": info["ort_version"],
          **{k: m[k] for k in SPACE_FIELDS},
          # Table ops, as LatencyTable.build counts them (the dispatch op is not one).
          "num_ops": sum(1 for op in m["ops"] if op["key"] != "dispatch_overhead"),
          "timing_seconds": round(time.perf_counter() - t0, 2),
          "build_seconds": round(time.perf_counter() - t0, 2),
          "bundle": {"evonas_jax_version": m.get("evonas_jax_version"),
                     "created": m.get("created"), "opset": m.get("opset")}}
  return {"meta": meta, "entries": entries}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("bundle", nargs="?", default=_HERE,
                 help="the bundle folder (manifest.json + ops/); default: this script's folder")
  p.add_argument("--out", required=True, help="the table JSON to write")
  p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (>= 1)")
  p.add_argument("--warmup", type=int, default=10, help="untimed calls per op")
  p.add_argument("--runs", type=int, default=30, help="timed calls per op (the median is kept)")
  p.add_argument("--quiet", action="store_true", help="no per-op progress lines")
  a = p.parse_args(argv)
  table = build_table(a.bundle, threads=a.threads, warmup=a.warmup, runs=a.runs,
                      progress=not a.quiet)
  with open(a.out, "w") as f:
    json.dump(table, f, indent=1)
  print(f"wrote {a.out}: {table['meta']['num_ops']} ops on {table['meta']['device']}, "
        f"{table['meta']['threads']} thread(s), {table['meta']['build_seconds']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
