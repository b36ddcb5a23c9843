"""Invalid-input fuzzing (issue 17, item 5): python benchmarks/fuzz_inputs.py [--cases N]

Draws hypothesis-generated invalid (and some valid) inputs for every entry point
(`evonas_jax.tools.fuzz.KINDS`: genomes, archs, --config.x=... overrides of train / search /
finetune / convert, the flags of export / convert / prepare, truncated or corrupt IDX /
array_record / checkpoint / latency-table / search-result files, missing / read-only / foreign
workdirs, NaN / inf images), runs each in-process, plus a sample as real
`python -m evonas_jax.<cli>` subprocesses, and writes benchmarks/results/fuzz_inputs.json:

  {"cases", "clear_errors", "workdir_unchanged", "by_kind": {kind: {"cases", "clear_errors",
   ...}}, ...}

cases: invalid inputs run (valid inputs, benign corruptions and skipped cases are not counted;
they are reported per kind as valid_accepted / benign / skipped); clear_errors: those that ended
in a clear error (an exception of a clear type raised by project code or a flag parser, naming
the field / flag / file; for CLI runs a non-zero exit naming it and no traceback ending outside
the project); workdir_unchanged: cases whose workdir (when they had one) kept every file.
Exit status 1 when an invalid input got an unclear error or a valid one was refused.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Cheap in-process kinds get more cases; file kinds (a copy + a restore per case) fewer.
DEFAULT_SHARE = {
    "genome_evonas": 1600, "genome_autoformer": 1000, "genome_nb201": 1000, "arch_evonas": 1400,
    "arch_nb201": 1000, "config_train": 1500, "config_search": 1300, "config_finetune": 1000,
    "config_convert": 800, "args_export": 800, "args_convert": 800, "args_prepare": 400,
    "idx_file": 800, "tfds_files": 400, "checkpoint_files": 600, "latency_table": 800,
    "search_results": 800, "workdir": 600, "nonfinite_images": 800,
}


def per_kind_counts(total: int | None, kinds: list[str]) -> dict[str, int]:
  share = {k: DEFAULT_SHARE.get(k, 300) for k in kinds}
  if total is None:
    return share
  s = sum(share.values())
  return {k: max(1, round(total * v / s)) for k, v in share.items()}


def summarize(results, examples: int = 5) -> dict:
  by_kind: dict[str, dict] = {}
  for r in results:
    k = by_kind.setdefault(r.kind, {"cases": 0, "clear_errors": 0, "workdir_checked": 0,
                                    "workdir_unchanged": 0, "valid": 0, "valid_accepted": 0,
                                    "benign": 0, "skipped": 0, "outcomes": collections.Counter(),
                                    "unclear": [], "seconds": 0.0})
    k["outcomes"][r.outcome] += 1
    k["seconds"] += r.seconds
    if r.outcome == "skipped":
      k["skipped"] += 1
      continue
    if r.valid:
      k["valid"] += 1
      k["valid_accepted"] += r.outcome == "accepted"
    elif r.outcome == "benign":
      k["benign"] += 1
    else:
      k["cases"] += 1
      k["clear_errors"] += r.outcome == "clear"
    if r.workdir_checked:
      k["workdir_checked"] += 1
      k["workdir_unchanged"] += r.workdir_unchanged
    if not r.good and len(k["unclear"]) < examples:
      k["unclear"].append({"outcome": r.outcome, "input": r.input[:300],
                           "message": r.message[:400]})
    if getattr(r, "traceback_shown", False):
      k["tracebacks_shown"] = k.get("tracebacks_shown", 0) + 1
  for k in by_kind.values():
    k["outcomes"] = dict(k["outcomes"])
    k["seconds"] = round(k["seconds"], 2)
  return by_kind


def main(argv=None) -> int:
  from evonas_jax.tools import fuzz
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", type=int, default=None,
                 help="total in-process cases, spread over the kinds (default: the built-in "
                      f"shares, {sum(DEFAULT_SHARE.values())} in all)")
  p.add_argument("--per_kind", action="append", default=[], metavar="KIND=N",
                 help="cases of one kind (repeatable; overrides --cases for that kind)")
  p.add_argument("--kinds", default=",".join(fuzz.KINDS),
                 help="comma list of kinds (default: all): " + ", ".join(fuzz.KINDS))
  p.add_argument("--cli_sample", type=int, default=24,
                 help="invalid config / flag cases also run as real `python -m` subprocesses")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "fuzz_inputs.json"))
  p.add_argument("--seed", type=int, default=0,
                 help="hypothesis draws are derandomized; a nonzero seed shifts them by drawing "
                      "seed extra cases first and dropping them")
  p.add_argument("--tmp", default=None, help="scratch folder (default: a new temp dir, removed)")
  args = p.parse_args(argv)
  kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
  bad = [k for k in kinds if k not in fuzz.KINDS]
  if bad:
    p.error(f"--kinds: unknown {bad}; allowed: {list(fuzz.KINDS)}")
  counts = per_kind_counts(args.cases, kinds)
  for item in args.per_kind:
    k, _, n = item.partition("=")
    if k not in fuzz.KINDS or not n.isdigit():
      p.error(f"--per_kind {item!r}: expected KIND=N with KIND in {list(fuzz.KINDS)}")
    counts[k] = int(n)

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  tmp = args.tmp or tempfile.mkdtemp(prefix="fuzz_inputs_")
  fx = fuzz.Fixtures(tmp)
  t_start = time.time()
  results = []
  timing = {}
  try:
    for kind in kinds:
      t0 = time.time()
      cases = fuzz.make_cases(kind, counts[kind] + args.seed, fx)[args.seed:]
      t1 = time.time()
      rs = [fuzz.check(c) for c in cases]
      results += rs
      timing[kind] = {"generate_s": round(t1 - t0, 2), "check_s": round(time.time() - t1, 2)}
      bad = [r for r in rs if not r.good]
      n_inv = sum(1 for r in rs if r.counted)
      n_clear = sum(1 for r in rs if r.counted and r.outcome == "clear")
      print(f"{kind:20s} {len(rs):5d} cases: {n_inv:5d} invalid, {n_clear:5d} clear, "
            f"{len(bad)} bad ({time.time() - t0:.1f} s)", flush=True)
      for r in bad[:3]:
        print(f"    {r.outcome}: {r.input[:120]} -> {r.message[:200]}", flush=True)
    cli_results = []
    if args.cli_sample:
      t0 = time.time()
      sample = fuzz.cli_cases(args.cli_sample, fx)
      for i, c in enumerate(sample):
        r = fuzz.check_cli(c, fx)
        cli_results.append(r)
        print(f"  cli {i + 1:3d}/{len(sample)} {r.outcome:16s} {r.seconds:5.1f} s  "
              f"{r.input[:110]}", flush=True)
      timing["cli"] = {"check_s": round(time.time() - t0, 2)}
    results += cli_results
  finally:
    fuzz.restore_permissions(tmp)
    if not args.tmp:
      shutil.rmtree(tmp, ignore_errors=True)

  by_kind = summarize(results)
  for k, t in timing.items():
    if k in by_kind:
      by_kind[k].update(t)
  counted = [r for r in results if r.counted]
  checked = [r for r in results if r.workdir_checked]
  import jax
  report = {
      "cases": len(counted),
      "clear_errors": sum(r.outcome == "clear" for r in counted),
      "workdir_unchanged": sum(r.workdir_unchanged for r in results if r.counted),
      "by_kind": {k: {"cases": v["cases"], "clear_errors": v["clear_errors"], **{
          x: y for x, y in v.items() if x not in ("cases", "clear_errors")}}
          for k, v in by_kind.items()},
      "workdir_checked": len(checked),
      "workdir_checked_unchanged": sum(r.workdir_unchanged for r in checked),
      "valid_cases": sum(r.valid and r.outcome != "skipped" for r in results),
      "valid_accepted": sum(r.valid and r.outcome == "accepted" for r in results),
      "benign": sum(r.outcome == "benign" for r in results),
      "skipped": sum(r.outcome == "skipped" for r in results),
      "unclear": sum(not r.good for r in results),
      "cli_runs": len(cli_results),
      "cli_tracebacks_shown": sum(r.traceback_shown for r in cli_results),
      "wall_s": round(time.time() - t_start, 1),
      "jax_version": jax.__version__, "python": platform.python_version(),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
      "command": " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
      "definitions": {
          "cases": "invalid inputs run (valid inputs, benign corruptions and skipped cases "
                   "excluded); in-process and CLI subprocess runs (kinds '<kind>:cli')",
          "clear_errors": "clear type, raised in project code or a flag parser, message names "
                          "the field / flag / file, workdir unchanged; CLI: non-zero exit, no "
                          "traceback ending outside evonas_jax/",
          "workdir_unchanged": "of `cases`: every file present before the case is unchanged "
                               "after it (cases without a workdir count as unchanged; "
                               "workdir_checked says how many had one)",
          "benign": "a corruption that the reader tolerated with the data intact",
      },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1, default=str)
    f.write("\n")
  print(f"\n{report['cases']} invalid cases, {report['clear_errors']} clear errors, "
        f"{report['workdir_unchanged']} workdirs unchanged; {report['valid_accepted']}/"
        f"{report['valid_cases']} valid accepted; {report['unclear']} unclear; "
        f"{report['wall_s']} s -> {args.out}")
  return 0 if report["unclear"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
