"""CA-DDKD supernet training throughput (images/s) on a 1-device vs an N-device data mesh.

Same global batch, same teacher/projectors/loss as the quickstart, k subnets per step; compile
excluded (warm-up steps) and reported separately. On a CPU host the N "devices" are
XLA_FLAGS=--xla_force_host_platform_device_count=N views of the same cores, so this measures the
overhead/benefit of the shard_map split there; on a GPU host it is real data parallelism.

  python benchmarks/train_throughput.py [--devices 8] [--steps 10] [--k 2]
      -> benchmarks/results/train_throughput_<platform>.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=8)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--k", type=int, default=2)
ap.add_argument("--batch", type=int, default=128)
args = ap.parse_args()
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from evonas_jax import data as data_lib  # noqa: E402
from evonas_jax import parallel  # noqa: E402
from evonas_jax.nn.teacher import teacher_from_config  # noqa: E402
from evonas_jax.pst import PSTSchedule, sample_step_genomes  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402
from evonas_jax.trainer import make_supernet_trainer  # noqa: E402


def main():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "quickstart", os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.batch_size = args.batch
  c.pst.enabled = False
  c.pst.k_max = args.k
  space = get_space(c.space, c.preset)
  info = data_lib.dataset_info(c.data)
  teacher = teacher_from_config(c.teacher.model, info.num_classes)
  t_vars = jax.jit(functools.partial(teacher.init, train=False))(
      jax.random.key(1), jnp.zeros((1, *info.image_shape)))
  schedule = PSTSchedule(100, enabled=False, k_max=args.k)
  it = data_lib.train_iterator(c.data, c.batch_size, seed=0)
  batches = [next(it) for _ in range(args.steps + args.warmup)]
  out = {"device": f"{jax.devices()[0].platform}", "physical_cores": os.cpu_count(),
         "global_batch": c.batch_size, "k": args.k, "steps": args.steps, "runs": {}}
  for n in (1, args.devices):
    mesh = parallel.make_data_mesh(n)
    tv = parallel.replicate(mesh, t_vars)
    step_fn, state, _ = make_supernet_trainer(c, space, info, schedule, teacher, tv, mesh,
                                              jax.random.key(0))
    t0 = time.time()
    for s in range(args.warmup + args.steps):
      if s == args.warmup:
        jax.block_until_ready(state)
        t_compile, t0 = time.time() - t0, time.time()
      b = parallel.shard_batch(mesh, {"image": batches[s]["image"], "label": batches[s]["label"]})
      state, m = step_fn(state, tv, b, sample_step_genomes(space, schedule, s, 0),
                         jax.random.key(s))
    jax.block_until_ready(state)
    dt = time.time() - t0
    out["runs"][f"{n}_devices"] = {"images_per_s": args.steps * c.batch_size / dt,
                                   "s_per_step": dt / args.steps,
                                   "warmup_incl_compile_s": t_compile}
    print(n, out["runs"][f"{n}_devices"], flush=True)
  r = out["runs"]
  out["ratio"] = r[f"{args.devices}_devices"]["images_per_s"] / r["1_devices"]["images_per_s"]
  path = os.path.join(os.path.dirname(__file__), "results",
                      f"train_throughput_{out['device']}.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
