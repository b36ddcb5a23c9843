"""Kill -9 harness: SIGKILL real training / search processes at random moments (and while they
write checkpoints), rerun the same command, and compare the final state with an uninterrupted run.

  python benchmarks/fault_injection.py                      # every path, >= 10 kills each
  python benchmarks/fault_injection.py --paths search_lut --kills 4 --out /tmp/fi.json

Writes benchmarks/results/fault_injection.json:
  {"paths": {name: {"tried", "survived", "equal_to_uninterrupted", "max_abs_diff", "trials",
                    "kills_during_checkpoint_write", "reference_seconds", ...}}, "device", ...}

Paths (each a real `python -m evonas_jax.train|search` command, CPU, tiny sizes):
  teacher_stage         train with the teacher stage (ViT teacher, then CA-DDKD supernet)
  supernet_k2_sandwich  k = 2 subnets per step, sandwich sampling with in-place KD, the cosine
                        restarting at every PST stage
  teacher_store         CA-DDKD from a precomputed teacher store (teacher.source = "store")
  search_lut            NSGA-II search, DMMPE fitness on 2 sub-meshes, lookup-table latency
  search_measured       the same with latency = "measured"
  multiprocess          2 JAX processes (launch/local_multiprocess.sh, per_host data); the
                        whole process group is killed, as when a node dies

Protocol per path: one uninterrupted reference run (cold compile cache), then a second one
(warm cache, as every relaunch finds it): its wall time T spreads the kill moments, and whether
the two agree is reported (`two_uninterrupted_runs_equal`). Then trials, each in a fresh
workdir: up to `--kills_per_trial` launches, each SIGKILLed (the whole process group) at a random
moment in (0.05 T, 0.95 T) or, on alternate launches, at the first orbax temporary checkpoint
folder seen after such a moment (a kill during a checkpoint write); then one launch that runs to
the end. A launch that finishes before its kill moment ends the trial's kills; a kill that lands
after results.json was written (the process was exiting) also ends them, since the run is then
complete and a relaunch refuses the finished workdir. A kill *survives* when every later launch
of its trial ran without an error of its own and the trial ended with the run complete. The
final state is compared with the reference:
  train   final/ variables (every leaf, max |diff|), results.json accuracies, and the loss of every
          step in metrics.jsonl (each step exactly once)
  search  pareto.json (genomes, scores, costs, latencies), hypervolume, and the per-generation
          metrics.jsonl rows (each generation once)
`search_measured` times latencies on the machine, so no two runs (interrupted or not) see the
same numbers and the front legitimately differs; there the check is what resume promises: every
record in the last checkpoint before a kill is in the final archive unchanged (bitwise), and the
hypervolume scale is the one measured by the trial's first launch.

Runs share one persistent XLA compilation cache (as a user's runs do), so a relaunch loads what
the killed run compiled. CPU only; expect 30-60 min on 2 cores for every path at 10 kills.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

TRAIN_BASE = ["--config.log_every=1", "--config.checkpoint_every=2", "--config.num_steps=6",
              "--config.keep_checkpoints=2", "--config.tensorboard=True"]
PATHS = {
    "teacher_stage": dict(kind="train", devices=2, args=TRAIN_BASE + [
        "--config.teacher.source=train", "--config.teacher.num_steps=6",
        "--config.teacher.eval_every=100", "--config.parallel.num_devices=2"]),
    "supernet_k2_sandwich": dict(kind="train", devices=2, args=TRAIN_BASE + [
        "--config.pst.k_max=2", "--config.sampling.rule=sandwich",
        "--config.sampling.inplace_kd=True", "--config.optimizer.restart_per_stage=True",
        "--config.parallel.num_devices=2"]),
    "teacher_store": dict(kind="train", devices=2, store=True, args=TRAIN_BASE + [
        "--config.teacher.source=store", "--config.data.crop_padding=0",
        "--config.data.random_flip=False", "--config.distill.kd_ratio=0.5",
        "--config.parallel.num_devices=2"]),
    "search_lut": dict(kind="search", devices=2, args=["--config.latency=lut"]),
    "search_measured": dict(kind="search", devices=2, args=["--config.latency=measured"]),
    "multiprocess": dict(kind="train", devices=1, processes=2, args=TRAIN_BASE + [
        "--config.parallel.data_sharding=per_host"]),
}
SEARCH_BASE = [
    "--config.space_overrides.max_depths=(1, 2, 2, 1)", "--config.space_overrides.mlp_choices=(1.0, 4.0)",
    "--config.space_overrides.expand_choices=(1.0, 2.0)",
    "--config.space_overrides.d_state_choices=(16, 32)",
    "--config.population_size=6", "--config.num_generations=4",
    "--config.evaluator.num_eval_batches=2", "--config.evaluator.eval_batch_size=64",
    "--config.evaluator.calib_batches=1", "--config.evaluator.calib_batch_size=32",
    "--config.evaluator.group_size=2", "--config.evaluator.num_devices=2",
    "--config.latency_measure.warmup=1", "--config.latency_measure.runs=3",
    "--config.latency_measure.table_warmup=1", "--config.latency_measure.table_runs=3",
    "--config.latency_validation_archs=0", "--config.measure_pareto_latency=False",
    "--config.data.source=digits", "--config.data.val_size=200", "--config.data.image_size=16",
    "--config.data.mean=0.3", "--config.data.std=0.35", "--config.tensorboard=True"]


# ------------------------------------------------------------------------------------ commands
def command(path: str, spec: dict, workdir: str, data_dir: str, store_dir: str) -> list[str]:
  py = sys.executable
  if spec["kind"] == "search":
    return [py, "-m", "evonas_jax.search", "--config", os.path.join(ROOT, "configs",
                                                                  "search_quickstart.py"),
            "--workdir", workdir, *SEARCH_BASE, f"--config.data.tfds_data_dir={data_dir}",
            *spec["args"]]
  args = ["--config", os.path.join(ROOT, "configs", "ci_tiny.py"), "--workdir", workdir,
          f"--config.data.tfds_data_dir={data_dir}", *spec["args"]]
  if spec.get("store"):
    args.append(f"--config.teacher.store={store_dir}")
  if spec.get("processes", 1) > 1:
    return ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"),
            str(spec["processes"]), str(spec["devices"]), "--", *args]
  return [py, "-m", "evonas_jax.train", *args]


def env_for(spec: dict, cache_dir: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", EVONAS_JAX_COMPILE_CACHE=cache_dir,
             PYTHON=sys.executable, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={spec['devices']}",
             TQDM_DISABLE="1")
  return env


def _tmp_checkpoint_dirs(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"), recursive=True)


def launch(cmd, env, log_path, kill_at: float | None, kill_on_write: bool, workdir: str,
           deadline: float) -> dict:
  """Runs `cmd` in its own process group; SIGKILLs the group at `kill_at` seconds, or when a
  temporary checkpoint folder appears (kill_on_write). Returns {"rc", "killed", "seconds",
  "during_write"}."""
  t0 = time.time()
  with open(log_path, "ab") as log:
    log.write(f"\n===== launch {time.ctime()} kill_at={kill_at} on_write={kill_on_write}\n"
              .encode())
    log.flush()
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, cwd=ROOT)
    killed = during_write = False
    while p.poll() is None:
      now = time.time() - t0
      # On-write kills arm at kill_at, then strike at the next temporary checkpoint folder
      # (so they do not all hit the run's first checkpoint).
      if kill_on_write and now >= kill_at and _tmp_checkpoint_dirs(workdir):
        during_write = True
      if during_write or (not kill_on_write and kill_at is not None and now >= kill_at):
        os.killpg(p.pid, signal.SIGKILL)
        killed = True
        p.wait()
        break
      if now > deadline:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise TimeoutError(f"{cmd[:3]} ran past {deadline:.0f} s; see {log_path}")
      time.sleep(0.003 if kill_on_write else 0.02)
    if killed:
      try:   # the group may hold children that outlive the leader (multi-process launcher)
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    return {"rc": p.returncode, "killed": killed, "seconds": time.time() - t0,
            "during_write": during_write}


# --------------------------------------------------------------------------------- final state
def _load_tree(path: str) -> dict:
  import jax
  import numpy as np
  from evonas_jax.checkpoint import load_pytree
  tree = load_pytree(path)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def train_state(workdir: str) -> dict:
  res = json.load(open(os.path.join(workdir, "results.json")))
  rows = _rows(workdir)
  losses = [(r["step"], r.get("loss"), r.get("teacher_loss")) for r in rows
            if "loss" in r or "teacher_loss" in r]
  return {"leaves": _load_tree(os.path.join(workdir, "final")),
          "scores": {n: {k: v for k, v in s.items() if k.startswith(("val_", "test_"))}
                     for n, s in res["subnets"].items()},
          "losses": losses}


def search_state(workdir: str) -> dict:
  p = json.load(open(os.path.join(workdir, "pareto.json")))
  keep = ("genome", "accuracy", "error", "latency_ms", "macs", "params", "generation")
  front = sorted(([r.get(k) for k in keep] for r in p["pareto"]), key=lambda r: r[0])
  rows = [{k: v for k, v in r.items() if k in ("step", "hypervolume", "num_pareto",
                                              "num_evaluated")} for r in _rows(workdir)]
  return {"front": front, "hypervolume": p["hypervolume"], "rows": rows}


def compare(kind: str, ref: dict, got: dict) -> tuple[bool, float, str]:
  """(equal, max |diff| over numeric values, first difference)."""
  import numpy as np
  if kind == "train":
    if ref["leaves"].keys() != got["leaves"].keys():
      return False, float("inf"), "different variable trees"
    worst, where = 0.0, ""
    for k, a in ref["leaves"].items():
      d = float(np.max(np.abs(a.astype(np.float64) - got["leaves"][k]))) if a.size else 0.0
      if d > worst:
        worst, where = d, k
    same = (worst == 0.0 and ref["scores"] == got["scores"] and ref["losses"] == got["losses"])
    why = "" if same else (f"leaf {where} differs by {worst:.3g}" if worst else
                           "scores differ" if ref["scores"] != got["scores"] else
                           f"metrics.jsonl losses differ ({len(ref['losses'])} vs "
                           f"{len(got['losses'])} rows)")
    return same, worst, why
  worst = 0.0
  for a, b in zip(ref["front"], got["front"]):
    for x, y in zip(a[1:], b[1:]):
      if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        worst = max(worst, abs(float(x) - float(y)))
  same = ref == got
  why = "" if same else ("fronts differ" if ref["front"] != got["front"] else
                         "hypervolume differs" if ref["hypervolume"] != got["hypervolume"] else
                         "metrics.jsonl rows differ")
  return same, worst, why


def _latest_search_meta(workdir: str) -> dict | None:
  """meta of the newest finalized search checkpoint (orbax JsonSave: checkpoints/<g>/meta)."""
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                 if d.isdigit()) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
  for s in reversed(steps):
    for name in ("metadata", "meta.json"):
      f = os.path.join(workdir, "checkpoints", str(s), "meta", name)
      if os.path.exists(f):
        try:
          return json.load(open(f))
        except json.JSONDecodeError:
          continue
  return None


def measured_resume_check(workdir: str, saved: list[dict]) -> tuple[bool, str]:
  """search_measured: every archive record of the checkpoints seen before the kills is in the
  final archive bitwise, and the hypervolume scale never changed."""
  final = _latest_search_meta(workdir)
  if final is None:
    return False, "no final checkpoint"
  recs = {tuple(r["genome"]): r for r in final["archive"]}
  for m in saved:
    for r in m["archive"]:
      if recs.get(tuple(r["genome"])) != r:
        return False, f"record {r['genome']} changed after resume"
    if m.get("hv_scale") != final.get("hv_scale"):
      return False, f"hv_scale {m.get('hv_scale')} -> {final.get('hv_scale')}"
  return True, ""


# ----------------------------------------------------------------------------------------- main
def build_store(work: str, data_dir: str, cache_dir: str) -> str:
  """A teacher store of a seeded random ViT teacher over the digits train split (not killed)."""
  store = os.path.join(work, "store")
  code = f"""
import functools, jax, jax.numpy as jnp
import importlib.util
spec = importlib.util.spec_from_file_location("c", {os.path.join(ROOT, 'configs', 'ci_tiny.py')!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c = m.get_config()
c.data.tfds_data_dir = {data_dir!r}; c.data.crop_padding = 0; c.data.random_flip = False
from evonas_jax import data as data_lib
from evonas_jax.nn.teacher import teacher_from_config
from evonas_jax.teacher_store import compute_store
info = data_lib.dataset_info(c.data)
t = teacher_from_config(c.teacher.model, info.num_classes)
v = jax.jit(functools.partial(t.init, train=False))(jax.random.key(5), jnp.zeros((1, *info.image_shape)))
compute_store(lambda v, x: t.apply(v, x), v, c.data, {store!r}, batch_size=256, progress=False)
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                 env=env_for({"devices": 1}, cache_dir))
  return store


def run_path(name: str, spec: dict, work: str, data_dir: str, store_dir: str, cache_dir: str,
             kills: int, kills_per_trial: int, rng: random.Random, timeout: float) -> dict:
  env = env_for(spec, cache_dir)
  logs = os.path.join(work, "logs")
  os.makedirs(logs, exist_ok=True)
  ref_wd = os.path.join(work, name, "reference")
  r = launch(command(name, spec, ref_wd, data_dir, store_dir), env,
             os.path.join(logs, f"{name}_reference.log"), None, False, ref_wd, timeout)
  if r["rc"] != 0:
    raise RuntimeError(f"{name}: the uninterrupted run failed (rc {r['rc']}); see "
                       f"{os.path.join(logs, name + '_reference.log')}")
  kind = spec["kind"]
  ref_state = train_state(ref_wd) if kind == "train" else search_state(ref_wd)
  # A second uninterrupted run: its wall time (compile cache warm, as every relaunch finds it)
  # spreads the kill moments over a real run, and it shows whether two uninterrupted runs agree.
  rep_wd = os.path.join(work, name, "reference_repeat")
  if name == "search_lut":
    os.makedirs(rep_wd)
    shutil.copy(os.path.join(ref_wd, "latency_table.json"), rep_wd)
  r2 = launch(command(name, spec, rep_wd, data_dir, store_dir), env,
              os.path.join(logs, f"{name}_reference_repeat.log"), None, False, rep_wd, timeout)
  if r2["rc"] != 0:
    raise RuntimeError(f"{name}: the repeated uninterrupted run failed (rc {r2['rc']})")
  t_ref = r2["seconds"]
  rep_eq, rep_diff, _ = compare(kind, ref_state,
                                train_state(rep_wd) if kind == "train" else search_state(rep_wd))
  out = {"tried": 0, "survived": 0, "kills_during_checkpoint_write": 0, "trials": [],
         "reference_seconds_cold": round(r["seconds"], 1), "reference_seconds": round(t_ref, 1),
         "two_uninterrupted_runs_equal": rep_eq, "two_uninterrupted_runs_max_abs_diff": rep_diff}
  trial = 0
  while out["tried"] < kills:
    if trial >= 4 * kills:
      raise RuntimeError(f"{name}: {trial} trials gave only {out['tried']} kills (every run "
                         f"finished before its kill moment)")
    trial += 1
    wd = os.path.join(work, name, f"trial{trial}")
    if name == "search_lut":
      # The lookup table is a timing: the trial reuses the reference's (as a resumed search
      # reuses its own), so the fronts are comparable bitwise.
      os.makedirs(wd)
      shutil.copy(os.path.join(ref_wd, "latency_table.json"), wd)
    log = os.path.join(logs, f"{name}_trial{trial}.log")
    cmd = command(name, spec, wd, data_dir, store_dir)
    t_info = {"launches": [], "error": ""}
    seen_meta: list[dict] = []
    trial_kills = 0
    while trial_kills < kills_per_trial and out["tried"] + trial_kills < kills:
      on_write = (out["tried"] + trial_kills) % 2 == 1
      at = rng.uniform(0.05, 0.95) * t_ref
      res = launch(cmd, env, log, at, on_write, wd, timeout)
      t_info["launches"].append({k: (round(v, 1) if isinstance(v, float) else v)
                                 for k, v in res.items()} | {"kill_at": round(at, 1)})
      if not res["killed"]:
        break                      # finished before the kill moment
      trial_kills += 1
      out["kills_during_checkpoint_write"] += int(res["during_write"])
      if name == "search_measured":
        m = _latest_search_meta(wd)
        if m is not None:
          seen_meta.append(m)
      if os.path.exists(os.path.join(wd, "results.json")):
        # Killed after results.json (the run's last write) while the process was exiting: the
        # run is complete, and a relaunch would rightly refuse the finished workdir.
        t_info["launches"][-1]["after_results_json"] = True
        break
    done = os.path.exists(os.path.join(wd, "results.json"))
    last = t_info["launches"][-1] if t_info["launches"] else {"killed": True}
    if last["killed"] and not done:
      res = launch(cmd, env, log, None, False, wd, timeout)
      t_info["launches"].append({k: (round(v, 1) if isinstance(v, float) else v)
                                 for k, v in res.items()})
    errors = [x for x in t_info["launches"] if not x["killed"] and x["rc"] != 0]
    complete = os.path.exists(os.path.join(wd, "results.json"))
    out["tried"] += trial_kills
    if errors or not complete:
      t_info["error"] = f"a relaunch failed (rc {errors[0]['rc']}); see {log}" if errors else \
          "the run did not complete"
      t_info["equal"] = False
    else:
      out["survived"] += trial_kills
      got = train_state(wd) if kind == "train" else search_state(wd)
      if name == "search_measured":
        ok, why = measured_resume_check(wd, seen_meta)
        t_info.update(equal=ok, resume_check=why or "archive and hv_scale kept",
                      max_abs_diff=compare(kind, ref_state, got)[1])
      else:
        eq, diff, why = compare(kind, ref_state, got)
        t_info.update(equal=eq, max_abs_diff=diff, difference=why)
    t_info["kills"] = trial_kills
    out["trials"].append(t_info)
    print(f"[fault_injection] {name} trial {trial}: {trial_kills} kill(s) "
          f"({sum(x.get('during_write', False) for x in t_info['launches'])} during a checkpoint "
          f"write), equal={t_info.get('equal')} {t_info.get('difference') or t_info['error']}",
          flush=True)
  eq = [t.get("equal", False) for t in out["trials"] if t["kills"]]
  out["equal_to_uninterrupted"] = bool(eq) and all(eq)
  out["max_abs_diff"] = max((t.get("max_abs_diff", 0.0) for t in out["trials"]), default=0.0)
  if name == "search_measured":
    out["comparison"] = ("measured latencies differ between any two runs, so equality means: "
                         "the records and hypervolume scale saved before each kill are kept "
                         "bitwise; max_abs_diff is the front's difference from the reference")
  shutil.rmtree(os.path.join(work, name), ignore_errors=True)   # keep the logs only
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {list(PATHS)}")
  ap.add_argument("--kills", type=int, default=10, help="kills per path (>= 10 for the record)")
  ap.add_argument("--kills_per_trial", type=int, default=3,
                  help="kills before a trial's run is let finish")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds per launch")
  ap.add_argument("--workdir", default="", help="scratch folder ('' = a temporary one)")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "fault_injection.json"))
  a = ap.parse_args()
  names = [p for p in a.paths.split(",") if p]
  bad = [p for p in names if p not in PATHS]
  if bad:
    ap.error(f"--paths: unknown {bad}; allowed: {list(PATHS)}")
  work = a.workdir or tempfile.mkdtemp(prefix="evonas_fault_")
  os.makedirs(work, exist_ok=True)
  cache_dir = os.path.join(work, "xla_cache")
  data_dir = os.path.join(work, "tfds")
  rng = random.Random(a.seed)
  store_dir = ""
  t0 = time.time()
  if any(PATHS[p].get("store") for p in names):
    # The digits data is prepared by the store build (not killed); every run shares it.
    store_dir = build_store(work, data_dir, cache_dir)
  results = {}
  for name in names:
    print(f"[fault_injection] {name}: reference run, then {a.kills} kills", flush=True)
    t = time.time()
    try:
      results[name] = run_path(name, PATHS[name], work, data_dir, store_dir, cache_dir, a.kills,
                               a.kills_per_trial, rng, a.timeout)
    except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as e:
      # One broken path is a finding, not a reason to lose the others' numbers.
      print(f"[fault_injection] {name}: FAILED: {type(e).__name__}: {e}", flush=True)
      results[name] = {"tried": 0, "survived": 0, "equal_to_uninterrupted": False,
                       "max_abs_diff": float("nan"), "kills_during_checkpoint_write": 0,
                       "error": f"{type(e).__name__}: {e}"}
    results[name]["seconds"] = round(time.time() - t, 1)
    r = results[name]
    print(f"[fault_injection] {name}: {r['survived']}/{r['tried']} kills survived "
          f"({r['kills_during_checkpoint_write']} during checkpoint writes), equal to the "
          f"uninterrupted run: {r['equal_to_uninterrupted']} (max |diff| {r['max_abs_diff']:.3g})",
          flush=True)
  from evonas_jax.provenance import provenance
  doc = {"paths": results, "kills_per_trial": a.kills_per_trial, "seed": a.seed,
         "seconds": round(time.time() - t0, 1), "device": f"CPU ({os.cpu_count()} cores)",
         "provenance": provenance(), "logs": "<workdir>/logs"}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:   # no machine's absolute paths in a committed result
    f.write(json.dumps(doc, indent=1).replace(os.path.abspath(work), "<workdir>"))
  print(f"[fault_injection] wrote {a.out}", flush=True)
  ok = all(r["survived"] == r["tried"] and r["equal_to_uninterrupted"] for r in results.values())
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
