"""NAS-Bench-201 ground truth and Suite-Zero proxy values from shared/benchdata (offline files).

Location: an explicit path, else $EVONAS_BENCHDATA, else `../shared/benchdata` next to the repo
root (the layout this project is developed in). Nothing is downloaded.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

ACC_COLUMNS = {"cifar10": "c10_test_200ep", "cifar100": "c100_test_200ep",
               "ImageNet16-120": "in16_test_200ep"}
SUITE_ZERO = ("epe_nas", "fisher", "flops", "grad_norm", "grasp", "jacov", "l2_norm", "nwot",
              "params", "plain", "snip", "synflow", "zen")


def find_benchdata(path: str | None = None) -> Path:
  cands = [path, os.environ.get("EVONAS_BENCHDATA"),
           str(Path(__file__).resolve().parents[2].parent / "shared" / "benchdata")]
  for c in cands:
    if c and (Path(c) / "nb201" / "nb201_merged.csv").is_file():
      return Path(c)
  raise FileNotFoundError(
      "NAS-Bench-201 benchdata not found: pass benchdata_dir / set $EVONAS_BENCHDATA to a folder "
      f"containing nb201/nb201_merged.csv (tried {[c for c in cands if c]})")


def load_nb201_table(path: str | None = None) -> dict[str, np.ndarray]:
  """All 15,625 rows: nb201_index (int), arch_str (str), the three 200-epoch test accuracies
  (cifar10 / cifar100 / ImageNet16-120 keys), and `sz_c10_<proxy>` / `sz_in16_<proxy>` Suite-Zero
  values (NaN for the non-unique nets that Suite-Zero did not score)."""
  f = find_benchdata(path) / "nb201" / "nb201_merged.csv"
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
