"""The benchmark data shipped in evonas_jax/proxies/data: read by default (never ../shared), the
bytes recorded in PROVENANCE.md, packaged in the wheel, and, where the full originals are
present (the project's ../shared/benchdata), equal to them value by value and rebuilt
byte for byte by benchmarks/build_benchdata_subset.py."""
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evonas_jax.proxies import benchdata as B

try:
  import tomllib
except ModuleNotFoundError:   # Python 3.10: pytest depends on tomli there
  import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ORIGINALS = ROOT.parent / "shared" / "benchdata"
needs_originals = pytest.mark.skipif(
    not (ORIGINALS / "nb201" / "nb201_merged.csv").is_file(),
    reason=f"data-provenance check: the full originals are not at {ORIGINALS}")


@pytest.fixture
def no_env(monkeypatch):
  monkeypatch.delenv("EVONAS_BENCHDATA", raising=False)


def test_default_is_the_shipped_subset(no_env):
  """With no path and no $EVONAS_BENCHDATA the tables come from the package, even though this
  checkout may sit next to ../shared/benchdata."""
  assert B.find_benchdata() == B.DATA_DIR == ROOT / "evonas_jax" / "proxies" / "data"
  t = B.load_nb201_table()
  assert (t["nb201_index"] == np.arange(15625)).all()
  assert len(set(t["arch_str"])) == 15625 and len(t["naslib_op_indices"]) == 15625
  # Best test accuracies as the originals' README states them (200 epochs, mean over seeds).
  assert [round(float(t[k].max()), 2) for k in ("cifar10", "cifar100", "ImageNet16-120")] == \
      [94.37, 73.51, 47.31]
  # Suite-Zero scored the 9,445 unique cells; every column has the same NaN pattern.
  scored = np.isfinite(t["sz_c10_params"])
  assert scored.sum() == 9445
  for k in t:
    if k.startswith("sz_"):
      assert (np.isfinite(t[k]) == scored).all(), k
  e = B.load_naslib_early()
  sizes = {tag: {task: len(c["val_accuracy"]) for task, c in d.items()} for tag, d in e.items()}
  assert sizes["nb101"] == {"cifar10": 500} and sizes["nb301"] == {"cifar10": 725}
  assert set(sizes["tnb101_micro"].values()) == {711} and len(sizes["tnb101_micro"]) == 7
  assert min(sizes["tnb101_macro"].values()) == 662 and max(sizes["tnb101_macro"].values()) == 725
  for d in e.values():
    for c in d.values():
      assert {"arch", "val_accuracy", "params"} <= set(c)
      assert all(len(v) == len(c["arch"]) for v in c.values())


def test_shipped_files_have_the_recorded_sha256():
  text = (B.DATA_DIR / "PROVENANCE.md").read_text()
  recorded = dict(re.findall(r"\| `([\w.]+\.npz)` \| [\d ]+ \| `([0-9a-f]{64})` \|", text))
  assert set(recorded) == {B.NB201_FILE, B.NASLIB_FILE, B.HW_FILE}
  for name, want in recorded.items():
    assert hashlib.sha256((B.DATA_DIR / name).read_bytes()).hexdigest() == want, name


def test_package_data_ships_the_files():
  """pyproject's package-data globs (relative to the evonas_jax.proxies package) match every
  shipped file, so a wheel carries them."""
  cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
  globs = cfg["tool"]["setuptools"]["package-data"]["evonas_jax.proxies"]
  pkg = ROOT / "evonas_jax" / "proxies"
  matched = {p.name for g in globs for p in pkg.glob(g)}
  assert {B.NB201_FILE, B.NASLIB_FILE, B.HW_FILE, "PROVENANCE.md"} <= matched


def test_hw_latency_shipped_tables(no_env):
  """The shipped HW-NAS-Bench latencies: every device and shipped dataset, 15,625 cells, NaN
  only where HW-NAS-Bench has none (Edge TPU); bad names are refused listing the choices."""
  for ds in B.HW_SHIPPED_DATASETS:
    for dev in B.HW_DEVICES:
      a = B.load_hw_latency(dev, ds)
      assert a.shape == (15625,) and a.dtype == np.float64
      assert np.isnan(a).sum() == (4699 if dev == "edgetpu" else 0), (ds, dev)
      assert np.nanmin(a) > 0
  with pytest.raises(ValueError, match=r"not a HW-NAS-Bench device; allowed: \('edgegpu', "
                     r"'raspi4', 'edgetpu', 'pixel3', 'eyeriss', 'fpga'\)"):
    B.load_hw_latency("jetson")
  with pytest.raises(ValueError, match="not shipped"):
    B.load_hw_latency("fpga", "cifar100")


def test_explicit_locations_that_hold_no_data_are_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="benchdata path=.*neither"):
    B.load_nb201_table(str(tmp_path))
  monkeypatch.setenv("EVONAS_BENCHDATA", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"\$EVONAS_BENCHDATA=.*neither"):
    B.load_nb201_table()
  # A folder holding the shipped files is accepted (what benchmarks/libra.py passes back).
  assert B.find_benchdata(str(B.DATA_DIR)) == B.DATA_DIR


# ---- data provenance: needs the originals (the only skip allowed in this file) ---------------

def _same(value, orig) -> bool:
  """A kept float equals the original: a CSV field (a float64 repr; "" = missing -> NaN) or a
  JSON number (None = missing -> NaN)."""
  if orig is None or orig == "" or (isinstance(orig, float) and np.isnan(orig)):
    return bool(np.isnan(value))
  if isinstance(orig, str):
    return repr(float(value)) == orig
  return float(value) == orig


@needs_originals
def test_nb201_subset_equals_the_original_csv(no_env):
  with open(ORIGINALS / "nb201" / "nb201_merged.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  t = B.load_nb201_table()
  assert len(rows) == 15625
  assert [int(r["nb201_index"]) for r in rows] == t["nb201_index"].tolist()
  assert [r["arch_str"] for r in rows] == list(t["arch_str"])
  assert [r["naslib_op_indices"] for r in rows] == t["naslib_op_indices"]
  cols = {k: c for k, c in B.ACC_COLUMNS.items()}
  cols.update({f"sz_{ds}_{p}": f"{ds}_{p}" for ds in ("c10", "in16") for p in B.SUITE_ZERO})
  assert len(cols) == 3 + 26
  for key, col in cols.items():
    bad = [i for i, r in enumerate(rows) if not _same(t[key][i], r[col])]
    assert not bad, f"{key} (original column {col}) differs at rows {bad[:5]}"
  # The original-file reader gives the same table.
  o = B.load_nb201_table(str(ORIGINALS))
  assert list(o) == list(t)
  for k in o:
    if k == "naslib_op_indices":
      assert o[k] == t[k]
    else:
      assert o[k].dtype == t[k].dtype and np.array_equal(o[k], t[k], equal_nan=k != "arch_str")


@needs_originals
def test_naslib_subset_equals_the_original_json(no_env):
  e = B.load_naslib_early()
  assert list(e) == list(B.NASLIB_EARLY)
  for tag, fname in B.NASLIB_EARLY.items():
    data = json.loads((ORIGINALS / "naslib_zc_early" / fname).read_text())
    data = data["nasbench101"] if tag == "nb101" else data
    assert list(e[tag]) == list(data), tag
    for task, archs in data.items():
      cols = e[tag][task]
      assert list(cols["arch"]) == list(archs)
      names = {k for r in archs.values() for k in r} - {"idx", "arch"}
      assert set(cols) == names | {"arch"}, (tag, task)
      for k in names:
        for i, r in enumerate(archs.values()):
          v = r.get(k)
          v = v["score"] if isinstance(v, dict) else v
          assert _same(cols[k][i], v), (tag, task, k, i, cols[k][i], v)
  o = B.load_naslib_early(str(ORIGINALS))
  for tag in o:
    for task in o[tag]:
      for k, v in o[tag][task].items():
        w = e[tag][task][k]
        assert v.dtype == w.dtype and np.array_equal(v, w, equal_nan=k != "arch"), (tag, task, k)


@needs_originals
def test_build_script_reproduces_the_shipped_bytes(tmp_path):
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "build_benchdata_subset.py"),
                  "--src", str(ORIGINALS), "--out", str(tmp_path)], check=True,
                 capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  for name in (B.NB201_FILE, B.NASLIB_FILE, B.HW_FILE):
    assert (tmp_path / name).read_bytes() == (B.DATA_DIR / name).read_bytes(), name


@needs_originals
def test_hw_latency_subset_equals_the_original_csv(no_env):
  """HW-NAS-Bench latencies: shipped values equal the original CSV's text at a few archs (and
  in full), row i of the CSV being NB201 index i; the original-file reader agrees."""
  t = B.load_nb201_table()
  for ds in B.HW_SHIPPED_DATASETS:
    with open(ORIGINALS / "hw_nas_bench" / f"hw_{ds}.csv", newline="") as f:
      rows = list(csv.DictReader(f))
    assert [r["net"] for r in rows] == t["naslib_op_indices"]
    for dev, col in B.HW_DEVICES.items():
      got = B.load_hw_latency(dev, ds)
      for i in (0, 1, 777, 9000, 15624):
        orig = float(rows[i][col])
        assert (np.isnan(got[i]) if orig == -1 else repr(float(got[i])) == rows[i][col]), \
            (ds, dev, i, got[i], rows[i][col])
      want = np.array([float(r[col]) for r in rows])
      np.testing.assert_array_equal(got, np.where(want < 0, np.nan, want))
      np.testing.assert_array_equal(B.load_hw_latency(dev, ds, str(ORIGINALS)), got)
  # CIFAR-100 is read from the originals only.
  assert np.isfinite(B.load_hw_latency("fpga", "cifar100", str(ORIGINALS))).all()
