"""NAS-Bench-201 ground truth and NAS-Bench-Suite-Zero proxy values (offline, nothing downloaded).

Where the data comes from, in order:
  1. an explicit `path`, else
  2. $EVONAS_BENCHDATA,
  either a folder of the full original files (`nb201/nb201_merged.csv`,
  `naslib_zc_early/*.json`; the layout of the project's research `benchdata` folder) or a folder
  holding the two shipped files below; else
  3. the subset shipped inside the package, `evonas_jax/proxies/data/` (`DATA_DIR`):
     `nb201_subset.npz`, `naslib_zc_early_subset.npz` and `hw_nas_bench_latency.npz` (the
     HW-NAS-Bench per-device latencies, `load_hw_latency`), built from the originals by
     `benchmarks/build_benchdata_subset.py`; provenance and licences in `data/PROVENANCE.md`.
Both sources give the same arrays (tests/test_benchdata.py checks it value by value when the
originals are present).
"""
from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

import numpy as np

ACC_COLUMNS = {"cifar10": "c10_test_200ep", "cifar100": "c100_test_200ep",
               "ImageNet16-120": "in16_test_200ep"}
SUITE_ZERO = ("epe_nas", "fisher", "flops", "grad_norm", "grasp", "jacov", "l2_norm", "nwot",
              "params", "plain", "snip", "synflow", "zen")
# Early NASLib Suite-Zero subsets read by benchmarks/libra.py: tag -> original file name.
NASLIB_EARLY = {"nb101": "zc_nasbench101.json", "nb301": "zc_nasbench301.json",
                "tnb101_micro": "zc_transbench101_micro.json",
                "tnb101_macro": "zc_transbench101_macro.json"}

# HW-NAS-Bench (NB201 space) latency columns: device name -> column of `hw_<dataset>.csv`.
# Milliseconds, batch 1, as measured or simulated by HW-NAS-Bench on each device.
HW_DEVICES = {"edgegpu": "edgegpu_latency", "raspi4": "raspi4_latency",
              "edgetpu": "edgetpu_latency", "pixel3": "pixel3_latency",
              "eyeriss": "eyeriss_latency", "fpga": "fpga_latency"}
# Datasets whose latencies are shipped: the two the shipped Suite-Zero proxies cover.
# The originals (hw_nas_bench/hw_<dataset>.csv) also have "cifar100".
HW_SHIPPED_DATASETS = ("cifar10", "ImageNet16-120")
HW_ORIGINAL_DATASETS = ("cifar10", "cifar100", "ImageNet16-120")

DATA_DIR = Path(__file__).resolve().parent / "data"
NB201_FILE = "nb201_subset.npz"
NASLIB_FILE = "naslib_zc_early_subset.npz"
HW_FILE = "hw_nas_bench_latency.npz"
_ORIGINAL_NB201 = Path("nb201") / "nb201_merged.csv"


def _is_originals(d: Path) -> bool:
  return (d / _ORIGINAL_NB201).is_file()


def _is_shipped(d: Path) -> bool:
  return (d / NB201_FILE).is_file()


def find_benchdata(path: str | None = None) -> Path:
  """The folder the tables are read from: `path`, else $EVONAS_BENCHDATA, else `DATA_DIR`.

  An explicit folder (argument or variable) that holds neither the originals nor the shipped
  files is an error, not a silent fallback to the shipped subset.
  """
  for value, what in ((path, "benchdata path"), (os.environ.get("EVONAS_BENCHDATA"),
                                                  "$EVONAS_BENCHDATA")):
    if value:
      d = Path(value)
      if _is_originals(d) or _is_shipped(d):
        return d
      raise FileNotFoundError(
          f"{what}={value!r} holds neither {_ORIGINAL_NB201} (the full originals) nor "
          f"{NB201_FILE} (the shipped subset); unset it to use the subset shipped in {DATA_DIR}")
  if not _is_shipped(DATA_DIR):
    raise FileNotFoundError(f"the shipped benchmark data {DATA_DIR / NB201_FILE} is missing: "
                            "reinstall evonas_jax, or set $EVONAS_BENCHDATA")
  return DATA_DIR


def load_nb201_table(path: str | None = None) -> dict[str, np.ndarray]:
  """All 15,625 NB201 cells, in NB201/NATS-tss index order:
    nb201_index (15625,) int; arch_str (15625,) object (NB201 strings);
    naslib_op_indices: list of 15625 NASLib tuple strings, e.g. "(4, 3, 3, 0, 0, 0)";
    cifar10 / cifar100 / ImageNet16-120 (15625,) float64: 200-epoch test accuracies (%);
    sz_c10_<proxy> / sz_in16_<proxy> (15625,) float64: Suite-Zero values on CIFAR-10 /
      ImageNet16-120, NaN for the 6,180 non-unique cells Suite-Zero did not score.
  `path`: see `find_benchdata`."""
  d = find_benchdata(path)
  if _is_originals(d):
    return _nb201_from_csv(d / _ORIGINAL_NB201)
  with np.load(d / NB201_FILE, allow_pickle=False) as z:
    out = {"nb201_index": z["nb201_index"].astype(np.int64),
           "arch_str": np.array([s.decode("ascii") for s in z["arch_str"]], dtype=object),
           "naslib_op_indices": ["(" + ", ".join(str(int(v)) for v in r) + ")"
                                 for r in z["naslib_op_indices"]]}
    for k, col in ACC_COLUMNS.items():
      out[k] = z[col].astype(np.float64)
    for p in SUITE_ZERO:
      for ds in ("c10", "in16"):
        # float32-stored columns hold values that were exactly float32: the cast is exact.
        out[f"sz_{ds}_{p}"] = z[f"{ds}_{p}"].astype(np.float64)
  return out


def _nb201_from_csv(f: Path) -> dict[str, np.ndarray]:
  with open(f, newline="") as fh:
    rows = list(csv.DictReader(fh))
  num = lambda s: float(s) if s != "" else np.nan  # noqa: E731
  out = {"nb201_index": np.array([int(r["nb201_index"]) for r in rows]),
         "arch_str": np.array([r["arch_str"] for r in rows], dtype=object),
         "naslib_op_indices": [r["naslib_op_indices"] for r in rows]}
  for k, col in ACC_COLUMNS.items():
    out[k] = np.array([num(r[col]) for r in rows])
  for p in SUITE_ZERO:
    for ds in ("c10", "in16"):
      out[f"sz_{ds}_{p}"] = np.array([num(r[f"{ds}_{p}"]) for r in rows])
  return out


def load_naslib_early(path: str | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """The early NASLib Suite-Zero subsets: {tag: {task: {field: (n,) array}}}.

  tag: a key of `NASLIB_EARLY` (nb101, nb301, tnb101_micro, tnb101_macro); task: the dataset or
  TNB101 task (e.g. "cifar10", "class_scene"); fields: "arch" (n,) object (the original JSON
  keys), "val_accuracy" (n,) float64 and one (n,) float64 array per proxy (its "score"; NaN where
  a record lacks it), records in file order. `path`: see `find_benchdata`."""
  d = find_benchdata(path)
  out: dict = {}
  if _is_originals(d):
    for tag, fname in NASLIB_EARLY.items():
      with open(d / "naslib_zc_early" / fname) as f:
        data = json.load(f)
      if tag == "nb101":
        data = data["nasbench101"]
      out[tag] = {}
      for task, archs in data.items():
        recs = list(archs.values())
        names = sorted({k for r in recs for k in r if k not in ("idx", "arch")})
        val = lambda r, k: (r[k]["score"] if isinstance(r.get(k), dict)  # noqa: E731
                            else r.get(k, np.nan))
        cols = {"arch": np.array(list(archs), dtype=object)}
        cols.update({k: np.array([val(r, k) for r in recs], np.float64) for k in names})
        out[tag][task] = cols
    return out
  with np.load(d / NASLIB_FILE, allow_pickle=False) as z:
    for tt in z["_order"]:   # the original files' task order
      tag, task = tt.decode("ascii").split(".")
      out.setdefault(tag, {})[task] = {}
    for key in z.files:
      if key == "_order":
        continue
      tag, task, field = key.split(".", 2)
      a = z[key]
      a = (np.array([s.decode("ascii") for s in a], dtype=object) if field == "arch"
           else a.astype(np.float64))
      out[tag][task][field] = a
  return out


@functools.lru_cache(maxsize=4)
def _original_order(d: str) -> list:
  """NASLib tuple strings of the original nb201_merged.csv, in NB201 index order (cached:
  parsing the 8.7 MB file takes seconds)."""
  with open(Path(d) / _ORIGINAL_NB201, newline="") as fh:
    return [r["naslib_op_indices"] for r in csv.DictReader(fh)]


def check_hw_device(device: str) -> str:
  """The HW-NAS-Bench latency column of `device`; ValueError listing the allowed names."""
  if device not in HW_DEVICES:
    raise ValueError(f"latency device {device!r} is not a HW-NAS-Bench device; allowed: "
                     f"{tuple(HW_DEVICES)} (or '' for the size objective)")
  return HW_DEVICES[device]


def load_hw_latency(device: str, dataset: str = "cifar10", path: str | None = None) -> np.ndarray:
  """HW-NAS-Bench latency (ms) of all 15,625 NB201 cells on `device`, (15625,) float64 in
  NB201/NATS-tss index order (the order of `load_nb201_table`).

  device: a key of `HW_DEVICES` (edgegpu, raspi4, edgetpu, pixel3, eyeriss, fpga).
  dataset: "cifar10" or "ImageNet16-120" (shipped; the original CSVs also have "cifar100").
  HW-NAS-Bench stores -1 where it has no measurement (4,699 cells on the Edge TPU): those are
  NaN here. `path`: see `find_benchdata` (originals: `hw_nas_bench/hw_<dataset>.csv`, rows
  keyed by the NASLib tuple and checked against the NB201 order)."""
  col = check_hw_device(device)
  d = find_benchdata(path)
  if _is_originals(d):
    if dataset not in HW_ORIGINAL_DATASETS:
      raise ValueError(f"HW-NAS-Bench dataset {dataset!r}; allowed: {HW_ORIGINAL_DATASETS}")
    f = d / "hw_nas_bench" / f"hw_{dataset}.csv"
    with open(f, newline="") as fh:
      rows = list(csv.DictReader(fh))
    if [r["net"] for r in rows] != _original_order(str(d)):
      raise ValueError(f"{f}: rows are not in NB201 index order")
    a = np.array([float(r[col]) for r in rows], np.float64)
  else:
    if dataset not in HW_SHIPPED_DATASETS:
      raise ValueError(f"HW-NAS-Bench dataset {dataset!r} is not shipped; allowed: "
                       f"{HW_SHIPPED_DATASETS} (point benchdata_dir / $EVONAS_BENCHDATA at the "
                       f"originals for {HW_ORIGINAL_DATASETS})")
    with np.load(d / HW_FILE, allow_pickle=False) as z:
      a = z[f"{dataset}.{col}"].astype(np.float64)
  return np.where(a < 0, np.nan, a)
