"""Builds the benchmark-data subset shipped in evonas_jax/proxies/data/ from the original files.

    python benchmarks/build_benchdata_subset.py [--src ../shared/benchdata] \
        [--out evonas_jax/proxies/data]

Reads (checked against the sha256 prefixes recorded in the originals' README):
  nb201/nb201_merged.csv                 -> nb201_subset.npz
  naslib_zc_early/zc_nasbench101.json,
  zc_nasbench301.json, zc_transbench101_micro.json,
  zc_transbench101_macro.json            -> naslib_zc_early_subset.npz
  hw_nas_bench/hw_cifar10.csv,
  hw_nas_bench/hw_ImageNet16-120.csv     -> hw_nas_bench_latency.npz (latency columns only)
and keeps only what evonas_jax and benchmarks/ read (evonas_jax.proxies.benchdata documents the
arrays). Every kept value is stored losslessly: float64, or float32 where the column's float64
values are all exactly float32 (checked here; the proxies NASLib computed in float32). The
output bytes are reproducible (fixed zip timestamps, sorted members), so rerunning this command
on the same originals gives the same files (tests/test_benchdata.py checks it when the
originals are present).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from evonas_jax.proxies.benchdata import (  # noqa: E402
    ACC_COLUMNS, HW_DEVICES, HW_FILE, HW_SHIPPED_DATASETS, NASLIB_EARLY, NASLIB_FILE, NB201_FILE,
    SUITE_ZERO)

# sha256 prefixes (16 hex digits) of the originals, as listed in shared/benchdata/README.md.
SOURCE_SHA16 = {
    "nb201/nb201_merged.csv": "cba24cb89061264c",
    "naslib_zc_early/zc_nasbench101.json": "c34840bc9af68b6e",
    "naslib_zc_early/zc_nasbench301.json": "537e9abd6f0b14fd",
    "naslib_zc_early/zc_transbench101_micro.json": "f9f2c5d6d9b9a739",
    "naslib_zc_early/zc_transbench101_macro.json": "f1d393373855bd7b",
    "hw_nas_bench/hw_cifar10.csv": "71e56e00ce03525a",
    "hw_nas_bench/hw_ImageNet16-120.csv": "c0d10fa8da52bcf8",
}


def sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def lossless(a: np.ndarray) -> np.ndarray:
  """a (float64) as float32 if that round-trips every value exactly (NaN included), else a."""
  f = a.astype(np.float32)
  return f if np.array_equal(f.astype(np.float64), a, equal_nan=True) else a


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez_compressed's layout with fixed member timestamps and order (reproducible)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for k in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(arrays[k]), allow_pickle=False)
      info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      z.writestr(info, buf.getvalue(), compresslevel=9)


def nb201_arrays(src: str) -> dict[str, np.ndarray]:
  with open(os.path.join(src, "nb201", "nb201_merged.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  idx = np.array([int(r["nb201_index"]) for r in rows], np.int32)
  if not np.array_equal(idx, np.arange(15625)):
    raise ValueError("nb201_merged.csv: rows are not NB201 indices 0..15624 in order")
  num = lambda s: float(s) if s != "" else np.nan  # noqa: E731
  out = {"nb201_index": idx,
         "arch_str": np.array([r["arch_str"].encode("ascii") for r in rows]),
         "naslib_op_indices": np.array([[int(v) for v in r["naslib_op_indices"].strip("()")
                                         .split(",")] for r in rows], np.int8)}
  cols = list(ACC_COLUMNS.values()) + [f"{ds}_{p}" for ds in ("c10", "in16") for p in SUITE_ZERO]
  for c in cols:
    a = np.array([num(r[c]) for r in rows], np.float64)
    # The CSV holds Python reprs of float64: check the text round-trips, so "lossless" below is
    # lossless with respect to the file itself.
    for r, v in zip(rows, a):
      if (r[c] == "") != np.isnan(v) or (r[c] and repr(float(v)) != r[c]):
        raise ValueError(f"nb201_merged.csv column {c}: {r[c]!r} is not a float64 repr")
    out[c] = lossless(a)
  return out


def naslib_arrays(src: str) -> dict[str, np.ndarray]:
  """One array per (benchmark, task, field): key 'tag.task.field'; field 'arch' holds the
  original JSON keys (ASCII bytes), 'val_accuracy' and every proxy's score in record order."""
  out, order = {}, []
  for tag, fname in NASLIB_EARLY.items():
    with open(os.path.join(src, "naslib_zc_early", fname)) as f:
      data = json.load(f)
    if tag == "nb101":
      data = data["nasbench101"]
    for task, archs in data.items():
      recs = list(archs.values())
      names = sorted({k for r in recs for k in r if k not in ("idx", "arch")})
      order.append(f"{tag}.{task}".encode("ascii"))
      out[f"{tag}.{task}.arch"] = np.array([k.encode("ascii") for k in archs])
      for k in names:
        v = [r.get(k) for r in recs]
        v = [x["score"] if isinstance(x, dict) else (np.nan if x is None else x) for x in v]
        out[f"{tag}.{task}.{k}"] = lossless(np.array(v, np.float64))
  out["_order"] = np.array(order)   # the files' task order (zip members are sorted by name)
  return out


def hw_arrays(src: str) -> dict[str, np.ndarray]:
  """HW-NAS-Bench latencies: key '<dataset>.<column>' -> (15625,) in NB201 index order (the
  rows' NASLib tuples are checked against nb201_merged.csv). Only the six latency columns are
  kept (not the energies or Eyeriss' arithmetic intensity); -1 (no measurement) is kept as is."""
  with open(os.path.join(src, "nb201", "nb201_merged.csv"), newline="") as f:
    order = [r["naslib_op_indices"] for r in csv.DictReader(f)]
  out = {}
  for ds in HW_SHIPPED_DATASETS:
    with open(os.path.join(src, "hw_nas_bench", f"hw_{ds}.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
    if [r["net"] for r in rows] != order:
      raise ValueError(f"hw_{ds}.csv: rows are not in NB201 index order")
    for col in HW_DEVICES.values():
      a = np.array([float(r[col]) for r in rows], np.float64)
      for r, v in zip(rows, a):
        if repr(float(v)) != r[col]:
          raise ValueError(f"hw_{ds}.csv column {col}: {r[col]!r} is not a float64 repr")
      out[f"{ds}.{col}"] = lossless(a)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", default=os.path.join(os.path.dirname(ROOT), "shared", "benchdata"))
  ap.add_argument("--out", default=os.path.join(ROOT, "evonas_jax", "proxies", "data"))
  a = ap.parse_args()
  for rel, want in SOURCE_SHA16.items():
    got = sha256(os.path.join(a.src, rel))[:16]
    if got != want:
      raise SystemExit(f"{rel}: sha256 starts {got}, the README records {want}")
  os.makedirs(a.out, exist_ok=True)
  for name, arrays in ((NB201_FILE, nb201_arrays(a.src)), (NASLIB_FILE, naslib_arrays(a.src)),
                       (HW_FILE, hw_arrays(a.src))):
    path = os.path.join(a.out, name)
    write_npz(path, arrays)
    print(f"{path}: {os.path.getsize(path)} bytes, sha256 {sha256(path)}")


if __name__ == "__main__":
  main()
