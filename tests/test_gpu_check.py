"""launch/gpu_check.sh: the --dry-run (CPU, tiny sizes) runs every check's plumbing end to end and
its summary lines agree with the JSON files, whose numbers are recomputed here from what each
benchmark measured; without a GPU the real mode stops at once, saying so."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
CHECKS = ("pallas_numerics", "scan", "train_step", "dmmpe")


def _env():
  env = dict(os.environ, PYTHON=sys.executable)
  # conftest's 8 fake devices are for this process; every check sets its own.
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_PLATFORMS", None)
  return env


def test_real_mode_without_gpu_stops_with_a_clear_message(tmp_path):
  r = subprocess.run(["bash", "launch/gpu_check.sh", "--out", str(tmp_path)], cwd=ROOT,
                     env=dict(_env(), JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2
  assert "no CUDA GPU visible to JAX" in r.stderr and "--dry-run" in r.stderr
  assert not os.listdir(tmp_path)
  r = subprocess.run(["bash", "launch/gpu_check.sh", "--dry"], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "unknown argument '--dry'" in r.stderr


@pytest.mark.slow
def test_dry_run_plumbing(tmp_path):
  out = tmp_path / "results"
  r = subprocess.run(["bash", "launch/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                     env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  pat = re.compile(r"\[gpu_check\] \w+: (PASS|FAIL|TIMEOUT) ")
  lines = [ln for ln in r.stdout.splitlines() if pat.match(ln)]
  assert [ln.split()[1].rstrip(":") for ln in lines] == list(CHECKS), r.stdout
  assert all(" PASS " in ln for ln in lines), lines
  summary = dict((ln.split()[1].rstrip(":"), ln) for ln in lines)
  assert re.search(r"\[gpu_check\] done in \d+ s: 4/4 passed", r.stdout)

  rec = json.load(open(out / "gpu_check_gpu.json"))
  assert rec["dry_run"] is True and rec["all_passed"] is True and rec["platform"] == "cpu"
  assert set(rec["checks"]) == set(CHECKS)
  for name, c in rec["checks"].items():
    assert c["status"] == "PASS" and c["json"] == f"{name}_gpu.json"
    assert summary[name].startswith(f"[gpu_check] {name}: PASS {c['summary']}")
  assert rec["provenance"]["packages"]["jax"]

  num = json.load(open(out / "pallas_numerics_gpu.json"))
  assert (num["passed"], num["failed"], num["errors"]) == (2, 0, 0)
  assert num["backend"] == "pallas_interpret" and num["kernel_calls"] >= 2
  assert all("pallas" in t["test"] and t["outcome"] == "passed" for t in num["tests"])

  scan = json.load(open(out / "scan_gpu.json"))
  e = scan["shapes"]["mamba_l1024"]
  assert e["shape_bdlng"] == [1, 32, 64, 16, 1]
  b, d, l, n, _ = e["shape_bdlng"]
  # Minimal traffic, recomputed: u, delta, z, y (b,d,l); B, C (b,n,l); A (d,n); D, bias (d).
  fwd_bytes = 4 * (4 * b * d * l + 2 * b * n * l + d * n + 2 * d)
  x = e["backends"]["pallas_interpret"]
  assert x["fwd_gbps"] == pytest.approx(fwd_bytes / x["fwd_s"] / 1e9, rel=1e-9)
  assert f"fwd {x['fwd_gbps']:.1f} GB/s" in summary["scan"]

  ts = json.load(open(out / "train_step_gpu.json"))
  row, shape = ts["official_shape"]["smallest"], ts["official_shape"]["shape"]
  assert shape == {"preset": "tiny", "image_size": 16, "batch": 4, "num_classes": 10,
                   "official": False}
  assert row["engine_images_per_s"] == pytest.approx(4 * 1000 / row["engine_ms"])
  assert row["official_ms"] is None
  assert f"engine {row['engine_images_per_s']:.0f} img/s" in summary["train_step"]

  dm = json.load(open(out / "dmmpe_gpu.json"))
  assert dm["ratio"] == pytest.approx(dm["dmmpe"]["candidates_per_s"] /
                                      dm["data_parallel"]["candidates_per_s"])
  assert dm["max_abs_accuracy_diff"] < 1e-5   # DMMPE scores what the baseline scores
  assert f"ratio {dm['ratio']:.2f} without compilation" in summary["dmmpe"]
