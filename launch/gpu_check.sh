#!/usr/bin/env bash
# Every GPU check of the project in one go (issue 18), within 8 minutes on one CUDA GPU:
#   1. pallas_numerics  tests/test_selective_scan.py's Pallas forward/backward-vs-reference tests
#                       run on the real Triton kernels (backend "pallas", not interpret mode)
#   2. scan             benchmarks/scan.py: achieved GB/s vs the device's memory bandwidth
#   3. train_step       benchmarks/train_step.py --part official: images/s of the compiled engine
#                       and the masked supernet at the official shape (base, 64x64, batch 32)
#   4. dmmpe            benchmarks/dmmpe.py: DMMPE vs the data-parallel baseline, with and without
#                       compilation
# Writes benchmarks/results/{pallas_numerics,scan,train_step,dmmpe,gpu_check}_gpu.json (each
# names the device) and prints one "[gpu_check] <check>: PASS|FAIL|TIMEOUT ..." line per check.
#
# Usage: launch/gpu_check.sh [--dry-run] [--out DIR]
#   --dry-run  the same plumbing on CPU at tiny sizes (~2-3 min on 2 cores), results in a temp
#              folder (or --out DIR); what CI runs (tests/test_gpu_check.py)
# Env:   PYTHON  interpreter with the project, pytest and (GPU) jax[cuda12]: pip install -e
#                '.[cuda,test]' (default .venv/bin/python, else python3)
# Exit status: 0 when every check passed, 1 otherwise (the other checks still run).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ $DRY -eq 1 ]]; then
  OUT="${OUT:-$WORK/results}"
  export JAX_PLATFORMS=cpu
  # Compile time dominates tiny CPU runs (as in the test suite); numerics stay fp32.
  export JAX_DISABLE_MOST_OPTIMIZATIONS=1
  SCAN_BACKEND=pallas_interpret
  # name: seconds allowed
  T_NUM=150; T_SCAN=150; T_TRAIN=240; T_DMMPE=240
else
  OUT="${OUT:-$ROOT/benchmarks/results}"
  export JAX_PLATFORMS=cuda
  SCAN_BACKEND=pallas
  T_NUM=90; T_SCAN=90; T_TRAIN=170; T_DMMPE=110     # 460 s in all, under the 8 minutes
fi
mkdir -p "$OUT"

# ---- the device (and a clear stop when there is no GPU)
if ! "$PY" - "$WORK/device.json" "$DRY" <<'EOF'
import json, sys
import jax
dry = sys.argv[2] == "1"
try:
  devs = jax.devices()
  found = devs[0].platform
except Exception as e:   # JAX_PLATFORMS=cuda without a CUDA backend fails in several ways
  devs, found = None, f"{type(e).__name__}: {e}".strip(": ")
if devs is None or (not dry and devs[0].platform != "gpu"):
  sys.exit(f"gpu_check: no CUDA GPU visible to JAX ({sys.executable}: {found}). "
           "On a GPU machine install jax[cuda12] (pip install -e '.[cuda,test]'); without one, "
           "run with --dry-run.")
from evonas_jax.provenance import provenance
p = provenance()
json.dump({"kind": devs[0].device_kind, "platform": devs[0].platform, "count": len(devs),
           "provenance": p}, open(sys.argv[1], "w"))
EOF
then
  rm -rf "$WORK"
  exit 2
fi

# ---- pytest plugin: the numerics tests call backend "pallas_interpret" / interpret=True; on
# the GPU they must exercise the compiled Triton kernels instead (same inputs, same tolerances).
mkdir -p "$WORK/plugin"
cat > "$WORK/plugin/gpu_check_pallas.py" <<'EOF'
"""Routes tests/test_selective_scan.py's interpret-mode Pallas calls to EVONAS_GPU_CHECK_BACKEND."""
import json
import os

import jax

TARGET = os.environ.get("EVONAS_GPU_CHECK_BACKEND", "pallas_interpret")
CALLS = {"pallas": 0, "pallas_interpret": 0}


def pytest_collection_modifyitems(config, items):
  if TARGET == "pallas" and jax.default_backend() != "gpu":
    raise RuntimeError("backend pallas needs a GPU; jax.default_backend() is "
                       f"{jax.default_backend()}")
  for mod in {item.module for item in items}:
    if getattr(mod, "_gpu_check_routed", False) or not hasattr(mod, "selective_scan"):
      continue
    scan, pallas = mod.selective_scan, getattr(mod, "selective_scan_pallas", None)

    def routed_scan(*a, backend="auto", _scan=scan, **k):
      if backend == "pallas_interpret":
        backend = TARGET
        CALLS[TARGET] += 1
      return _scan(*a, backend=backend, **k)

    def routed_pallas(*a, interpret=False, _pallas=pallas, **k):
      CALLS[TARGET] += 1
      return _pallas(*a, interpret=TARGET == "pallas_interpret", **k)

    mod.selective_scan = routed_scan
    if pallas is not None:
      mod.selective_scan_pallas = routed_pallas
    mod._gpu_check_routed = True


def pytest_sessionfinish(session, exitstatus):
  out = os.environ.get("EVONAS_GPU_CHECK_CALLS")
  if out:
    with open(out, "w") as f:
      json.dump({"backend": TARGET, "calls": CALLS[TARGET], "device": jax.devices()[0].device_kind},
                f)
EOF

# ---- summaries: one line per check from its JSON (and its exit status)
cat > "$WORK/summarize.py" <<'EOF'
"""summarize.py WORK OUT NAME RC MILLISECONDS JSON LOG LIMIT: prints and records one summary
line; exits 0 only when the check passed."""
import json, os, sys
import xml.etree.ElementTree as ET

work, out, name, rc, secs, path, logf = sys.argv[1:8]
limit = int(sys.argv[8]) if len(sys.argv) > 8 else 0
rc, secs = int(rc), int(secs) / 1000
dev = json.load(open(os.path.join(work, "device.json")))
D = f"{dev['count']} x {dev['kind']}"


def f(x, fmt=".0f"):
  return "n/a" if x is None else format(x, fmt)


def pallas_numerics():
  calls = json.load(open(os.path.join(work, "pallas_calls.json")))
  suite = ET.parse(os.path.join(work, "pallas_junit.xml")).getroot()
  suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
  cases = []
  for c in suite.iter("testcase"):
    kind = next((t.tag for t in c if t.tag in ("failure", "error", "skipped")), "passed")
    cases.append({"test": f"{c.get('classname')}::{c.get('name')}", "outcome": kind,
                  "seconds": float(c.get("time", 0))})
  n = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
  res = {"device": dev["kind"], "device_count": dev["count"], "backend": calls["backend"],
         "kernel_calls": calls["calls"], "passed": n["passed"], "failed": n["failure"],
         "errors": n["error"], "skipped": n["skipped"], "tests": cases}
  json.dump(res, open(path, "w"), indent=1)
  ok = n["passed"] > 0 and n["failure"] == n["error"] == 0 and calls["calls"] > 0
  return ok, (f"{n['passed']} passed, {n['failure']} failed, {n['error']} errors (backend "
              f"{calls['backend']}, {calls['calls']} kernel calls)")


def scan():
  r = json.load(open(path))
  parts = []
  for shape, e in r["shapes"].items():
    b = e["backends"]
    be = next(k for k in ("pallas", "pallas_interpret", "reference") if k in b)
    x = b[be]
    if "error" in x:
      return False, f"{shape} {be}: {x['error']}"
    peak = r.get("peak_gbps")
    frac = lambda k: (f" = {100 * x[k] / peak:.0f}% of {peak:.0f}" if peak else "")
    parts.append(f"{shape} {be} fwd {x['fwd_gbps']:.1f} GB/s{frac('fwd_gbps')}, fwd+bwd "
                 f"{x['fwd_bwd_gbps']:.1f} GB/s{frac('fwd_bwd_gbps')}, "
                 f"{x.get('fwd_time_vs_reference', float('nan')):.2g}x ref time")
  if not r.get("peak_gbps"):
    parts.append("peak bandwidth unknown for this device (pass --peak-gbps)")
  return True, "; ".join(parts)


def train_step():
  r = json.load(open(path))
  sh = r["official_shape"].pop("shape")
  bs = sh["batch"]
  parts = []
  for sub, row in r["official_shape"].items():
    ips = [f"{label} {bs * 1000 / row[k]:.0f} img/s" for label, k in
           (("engine", "engine_ms"), ("masked", "masked_ms")) if row.get(k)]
    parts.append(f"{sub}: " + ", ".join(ips))
  r["official_shape"]["shape"] = sh
  # images/s recorded next to the ms the benchmark measured.
  for sub, row in r["official_shape"].items():
    if sub != "shape":
      for k in ("engine_ms", "masked_ms"):
        if row.get(k):
          row[k.replace("_ms", "_images_per_s")] = bs * 1000 / row[k]
  json.dump(r, open(path, "w"), indent=2)
  official = ", official shape" if sh["official"] else ""
  return bool(parts), (f"{'; '.join(parts)} ({sh['preset']} {sh['image_size']}x"
                       f"{sh['image_size']} batch {bs}{official})")


def dmmpe():
  r = json.load(open(path))
  return "ratio" in r, (f"ratio {f(r.get('ratio'), '.2f')} without compilation, "
                        f"{f(r.get('ratio_end_to_end'), '.2f')} end to end (DMMPE vs data-"
                        f"parallel, {r.get('candidates')} candidates on {r.get('device')} "
                        f"{r.get('device_kind')})")


if rc == 0:
  try:
    ok, text = globals()[name]()
  except Exception as e:  # a missing or malformed JSON
    ok, text = False, f"no usable result ({type(e).__name__}: {e})"
  status = "PASS" if ok else "FAIL"
elif rc in (124, 137):
  status, text = "TIMEOUT", f"stopped after the {limit} s allowed"
else:
  status, text = "FAIL", f"exit status {rc}"
if status != "PASS":
  text += f"; log {logf}"
line = f"[gpu_check] {name}: {status} {text} [{secs:.0f} s]"
print(line, flush=True)
rec = {"status": status, "summary": text, "seconds": secs, "exit_status": rc,
       "json": os.path.basename(path) if os.path.exists(path) else None, "log": logf}
if status != "PASS" and os.path.exists(logf):
  rec["log_tail"] = open(logf, errors="replace").read().splitlines()[-40:]
checks_path = os.path.join(work, "checks.json")
checks = json.load(open(checks_path)) if os.path.exists(checks_path) else {}
checks[name] = rec
json.dump(checks, open(checks_path, "w"))
sys.exit(0 if status == "PASS" else 1)
EOF

FAILED=0
run_check() {   # run_check NAME LIMIT_S JSON CMD...: runs CMD under a time limit, summarises
  local name=$1 limit=$2 json=$3
  shift 3
  local log="$WORK/$name.log" t0 rc
  echo "[gpu_check] $name: running (at most ${limit} s; log $log)"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  # summarize.py exits non-zero unless the check passed.
  "$PY" "$WORK/summarize.py" "$WORK" "$OUT" "$name" "$rc" \
    "$(( ($(date +%s%N) - t0) / 1000000 ))" "$json" "$log" "$limit" || FAILED=1
}

T_START=$(date +%s)
echo "[gpu_check] device: $("$PY" -c "import json; d = json.load(open('$WORK/device.json')); \
print(d['count'], 'x', d['kind'], '(' + d['platform'] + ')')"); results -> $OUT"

if [[ $DRY -eq 1 ]]; then K="pallas and plain"; else K="pallas"; fi
run_check pallas_numerics "$T_NUM" "$OUT/pallas_numerics_gpu.json" \
  env EVONAS_GPU_CHECK_BACKEND="$SCAN_BACKEND" EVONAS_GPU_CHECK_CALLS="$WORK/pallas_calls.json" \
  PYTHONPATH="$WORK/plugin:$PYTHONPATH" JAX_PLATFORMS="$JAX_PLATFORMS" \
  "$PY" -m pytest -q -p no:cacheprovider -p gpu_check_pallas tests/test_selective_scan.py \
  -k "$K" --junitxml="$WORK/pallas_junit.xml"

if [[ $DRY -eq 1 ]]; then
  SCAN_ARGS=(--tiny --repeats 1 --shapes mamba_l1024 --no-associative --naive-length 16)
else
  SCAN_ARGS=(--repeats 10)
fi
run_check scan "$T_SCAN" "$OUT/scan_gpu.json" \
  "$PY" benchmarks/scan.py "${SCAN_ARGS[@]}" --out "$OUT/scan_gpu.json"

if [[ $DRY -eq 1 ]]; then
  TS_ARGS=(--steps 1 --preset tiny --image_size 16 --batch 4 --num_classes 10 --subnets smallest
           --engines compiled)
else
  TS_ARGS=(--steps 5)
fi
run_check train_step "$T_TRAIN" "$OUT/train_step_gpu.json" \
  "$PY" benchmarks/train_step.py --part official "${TS_ARGS[@]}" --out "$OUT/train_step_gpu.json"

if [[ $DRY -eq 1 ]]; then
  DM_ARGS=(--device cpu --num-cpu-devices 2 --candidates 4 --eval-batches 1 --eval-batch-size 32
           --calib-batches 1 --calib-batch-size 16 --devices-per-group 1 --group-size 2)
  # One generation where the benchmark runs several (search-sized by default).
  if "$PY" benchmarks/dmmpe.py --help 2>/dev/null | grep -q -- "--generations"; then
    DM_ARGS+=(--generations 1)
  fi
else
  DM_ARGS=(--device gpu --devices-per-group 1)
fi
run_check dmmpe "$T_DMMPE" "$OUT/dmmpe_gpu.json" \
  "$PY" benchmarks/dmmpe.py "${DM_ARGS[@]}" --kinds data_parallel,dmmpe --out "$OUT/dmmpe_gpu.json"

# ---- the run's own record
"$PY" - "$WORK" "$OUT" "$DRY" "$(( $(date +%s) - T_START ))" <<'EOF'
import json, os, sys
work, out, dry, secs = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
dev = json.load(open(os.path.join(work, "device.json")))
checks = json.load(open(os.path.join(work, "checks.json")))
rec = {"device": dev["kind"], "device_count": dev["count"], "platform": dev["platform"],
       "dry_run": dry, "seconds": secs, "checks": checks,
       "all_passed": all(c["status"] == "PASS" for c in checks.values()),
       "provenance": dev["provenance"], "work_dir": work}
json.dump(rec, open(os.path.join(out, "gpu_check_gpu.json"), "w"), indent=1)
print(f"[gpu_check] done in {secs} s: "
      f"{sum(c['status'] == 'PASS' for c in checks.values())}/{len(checks)} passed; "
      f"{os.path.join(out, 'gpu_check_gpu.json')}")
EOF
exit $FAILED
