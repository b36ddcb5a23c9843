"""Supernet train-step cost: the masked reference vs the compiled engine, in the same run.

(b) "official_shape": the official comparison shape -- base preset (dims 64/128/256/512), 64x64
    RGB, batch 32, 1000 classes, cross-entropy, AdamW (forward + backward + optimizer step), one
    device, the largest and the smallest subnet. The official PyTorch figures are the issue's
    measurement on this 2-core CPU (torch 2.13, 2 threads; midpoints of 1086-1185 ms and
    241-272 ms): the official code is not run here.
(a) "quickstart": configs/quickstart.py (tiny preset, 28x28 Fashion-MNIST shape, ViT teacher +
    CA-DDKD projectors, k = 1), on a sequence of subnets drawn by the quickstart's PST schedule
    at evenly spaced steps. The sequence runs twice: the first pass pays the compiles (the
    engine compiles each new width signature once), the second is the steady state.

Compile time is reported separately (first step / first pass) and as the end-to-end time a user
pays. "profile" times each compiled piece of the engine (the piece is waited for, so the sum is a
little above the pipelined step) for the largest subnet at the official shape.

  python benchmarks/train_step.py [--part all|official|quickstart] [--steps 5]
      -> benchmarks/results/train_step_cpu.json (merged with the parts not rerun)

--preset/--image_size/--batch/--num_classes shrink the "official_shape" part and --subnets /
--engines pick a subset of it (plumbing checks: `launch/gpu_check.sh --dry-run` runs the smallest
subnet on the engine at tiny/16/4/10); its PyTorch comparison is only recorded at the official
shape (base, 64, 32, 1000).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--part", default="all", choices=("all", "official", "quickstart"))
ap.add_argument("--steps", type=int, default=5, help="timed steps per official-shape measurement")
ap.add_argument("--qs_subnets", type=int, default=24, help="subnets in the quickstart sequence")
ap.add_argument("--out", default=None)
ap.add_argument("--preset", default="base", help="official_shape part: width preset")
ap.add_argument("--image_size", type=int, default=64, help="official_shape part: H = W")
ap.add_argument("--batch", type=int, default=32, help="official_shape part: batch size")
ap.add_argument("--num_classes", type=int, default=1000, help="official_shape part: classes")
ap.add_argument("--subnets", default="largest,smallest", help="official_shape part: subnets")
ap.add_argument("--engines", default="masked,compiled", help="official_shape part: engines")
args = ap.parse_args()
OFFICIAL = (args.preset, args.image_size, args.batch, args.num_classes) == ("base", 64, 32, 1000)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)
from evonas_jax import parallel  # noqa: E402
from evonas_jax.engine import EngineEvaluator, EngineTrainStep  # noqa: E402
from evonas_jax.nn.supernet import EvoNet, init_supernet, supernet_spec  # noqa: E402
from evonas_jax.space import arch_masks, get_space  # noqa: E402
from evonas_jax.steps import ShardedTrainStep  # noqa: E402
from evonas_jax.supernet_loss import DistillSetup, make_supernet_loss  # noqa: E402
from evonas_jax.tasks import Classification  # noqa: E402

OFFICIAL_MS = {"largest": 1135.5, "smallest": 256.5}   # issue's PyTorch midpoints, this CPU


def _sync(x):
  return jax.block_until_ready(x)


def official_shape(steps: int) -> dict:
  space = get_space("evonas", args.preset)
  num_classes, batch, hw = args.num_classes, args.batch, args.image_size
  mesh = parallel.make_data_mesh(1)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, hw, hw, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  b = parallel.shard_batch(mesh, {"image": images, "label": labels})
  _, variables = init_supernet(space, num_classes, jax.random.key(0), (hw, hw, 3))
  variables = jax.device_get(variables)   # host copy: each run donates its own device state
  tx = optax.adamw(1e-3, weight_decay=0.05)
  setup = DistillSetup(teacher=None, projector=None, task=Classification())
  out: dict = {}
  compile_s: dict = {}
  profile: dict = {}
  subnets = [n for n in ("largest", "smallest") if n in args.subnets.split(",")]
  engines = [e for e in ("masked", "compiled") if e in args.engines.split(",")]
  for name in subnets:
    arch = space.largest() if name == "largest" else space.smallest()
    genome = np.asarray(space.encode(arch), np.int32)[None]
    row = {}
    for engine in engines:
      if engine == "masked":
        student = EvoNet(supernet_spec(space), num_classes, bn_axis_name=parallel.DATA_AXIS)
        step = ShardedTrainStep(make_supernet_loss(student, space, setup), tx, mesh,
                                num_classes=num_classes)
      else:
        student = EvoNet(supernet_spec(space), num_classes)
        step = EngineTrainStep(student, space, setup, tx, mesh, target_shape=(num_classes,))
      params = {"student": variables["params"]}
      state = parallel.replicate(mesh, {"params": params,
                                        "batch_stats": {"student": variables["batch_stats"]},
                                        "opt_state": tx.init(params)})
      t0 = time.perf_counter()
      state, _ = step(state, {}, b, genome, jax.random.key(0))
      _sync(state)
      first = time.perf_counter() - t0
      times = []
      for s in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, {}, b, genome, jax.random.key(s + 1))
        _sync(state)
        times.append(time.perf_counter() - t0)
      ms = 1000 * statistics.median(times)
      row[f"{engine}_ms"] = ms
      compile_s[f"{name}_{engine}_first_step_s"] = first
      if engine == "compiled":
        compile_s[f"{name}_compiled_programs"] = len(step.backbone.programs)
        if name == "largest":
          step.backbone.timer = {}
          for s in range(2):
            state, _ = step(state, {}, b, genome, jax.random.key(100 + s))
            _sync(state)
          profile["largest_official_shape_ms_per_step"] = {
              k: round(1000 * v[0] / 2, 2) for k, v in sorted(step.backbone.timer.items())}
          step.backbone.timer = None
      # Inference (eval forward, batch 32): masked eval_step vs the engine's predict.
      host_vars = {"params": jax.device_get(state["params"]["student"]),
                   "batch_stats": jax.device_get(state["batch_stats"]["student"])}
      if engine == "masked":
        model = EvoNet(supernet_spec(space), num_classes)
        fwd = jax.jit(lambda v, x, m: model.apply(v, x, m))
        masks = arch_masks(space, arch)
        run = lambda: fwd(host_vars, images, masks)   # noqa: E731
      else:
        ev = EngineEvaluator(EvoNet(supernet_spec(space), num_classes), space, Classification())
        run = lambda: ev.predict(host_vars, images, arch)   # noqa: E731
      _sync(run())
      inf = []
      for _ in range(max(steps, 3)):
        t0 = time.perf_counter()
        _sync(run())
        inf.append(time.perf_counter() - t0)
      row[f"{engine}_inference_ms"] = 1000 * statistics.median(inf)
      print(f"[official {name}] {engine}: train {ms:.0f} ms/step (first step incl. compile "
            f"{first:.1f} s), inference {row[f'{engine}_inference_ms']:.0f} ms", flush=True)
      del state, step
    row["official_ms"] = OFFICIAL_MS[name] if OFFICIAL else None
    if "compiled" in engines:
      row["engine_ms"] = row.pop("compiled_ms")
      row["engine_inference_ms"] = row.pop("compiled_inference_ms")
      if "masked" in engines:
        row["speedup_vs_masked"] = row["masked_ms"] / row["engine_ms"]
      row["speedup_vs_official"] = row["official_ms"] / row["engine_ms"] if OFFICIAL else None
    out[name] = row
  out["shape"] = {"preset": args.preset, "image_size": hw, "batch": batch,
                  "num_classes": num_classes, "official": OFFICIAL}
  return {"official_shape": out, "compile_s": compile_s, "profile": profile}


def quickstart(n_subnets: int) -> dict:
  import importlib.util
  from evonas_jax import data as data_lib
  from evonas_jax.nn.teacher import teacher_from_config
  from evonas_jax.pst import PSTSchedule, sample_step_genomes
  from evonas_jax.trainer import make_supernet_trainer
  spec = importlib.util.spec_from_file_location("quickstart",
                                                os.path.join(ROOT, "configs", "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  space = get_space(c.space, c.preset)
  info = data_lib.dataset_info(c.data)
  teacher = teacher_from_config(c.teacher.model, info.num_classes)
  import functools
  t_vars = jax.jit(functools.partial(teacher.init, train=False))(
      jax.random.key(1), jnp.zeros((1, *info.image_shape)))
  schedule = PSTSchedule(c.num_steps, enabled=c.pst.enabled, k_max=c.pst.k_max,
                         k_final=c.pst.k_final, stages=list(c.pst.stages) or None)
  steps = np.linspace(0, c.num_steps - 1, n_subnets).astype(int)
  genomes = [sample_step_genomes(space, schedule, int(s), c.seed, c.sampling.rule) for s in steps]
  it = data_lib.train_iterator(c.data, c.batch_size, seed=0)
  batch = next(it)
  mesh = parallel.make_data_mesh(1)
  tv = parallel.replicate(mesh, t_vars)
  b = parallel.shard_batch(mesh, {"image": batch["image"], "label": batch["label"]})
  res = {"dataset": info.name, "batch_size": c.batch_size, "subnets": n_subnets}
  for engine in ("masked", "compiled"):
    c.engine = engine
    step_fn, state, _ = make_supernet_trainer(c, space, info, schedule, teacher, tv, mesh,
                                              jax.random.key(0))
    passes = []
    for p in range(2):
      t0 = time.perf_counter()
      per = []
      for i, g in enumerate(genomes):
        t1 = time.perf_counter()
        state, _ = step_fn(state, tv, b, g, jax.random.key(i))
        _sync(state)
        per.append(time.perf_counter() - t1)
      passes.append((time.perf_counter() - t0, per))
    (first_s, _), (second_s, per2) = passes
    res[f"{engine}_images_per_s"] = n_subnets * c.batch_size / second_s
    res[f"{engine}_median_step_ms"] = 1000 * statistics.median(per2)
    res[f"{engine}_first_pass_s"] = first_s
    if engine == "compiled":
      res["compiled_programs"] = len(step_fn.backbone.programs)
    print(f"[quickstart] {engine}: {res[f'{engine}_images_per_s']:.0f} images/s steady "
          f"(first pass incl. compiles {first_s:.1f} s for {n_subnets} steps)", flush=True)
  res["engine_images_per_s"] = res.pop("compiled_images_per_s")
  res["speedup"] = res["engine_images_per_s"] / res["masked_images_per_s"]
  return res


def main():
  path = args.out or os.path.join(os.path.dirname(__file__), "results", "train_step_cpu.json")
  old = {}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  out = dict(old)
  out.update({"device": f"{jax.devices()[0].device_kind} ({platform.processor() or 'cpu'}), "
                        f"{os.cpu_count()} cores",
              "jax": jax.__version__})
  if args.part in ("all", "official"):
    r = official_shape(args.steps)
    out["official_shape"] = r["official_shape"]
    out.setdefault("compile_s", {}).update(r["compile_s"])
    out.setdefault("profile", {}).update(r["profile"])
  if args.part in ("all", "quickstart"):
    q = quickstart(args.qs_subnets)
    out["quickstart"] = q
    out.setdefault("compile_s", {}).update({
        "quickstart_masked_first_pass_s": q["masked_first_pass_s"],
        "quickstart_compiled_first_pass_s": q["compiled_first_pass_s"]})
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
