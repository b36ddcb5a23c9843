"""Does CA-DDKD improve the supernet's ranking consistency? (issue 4 benchmark)

Trains the quickstart-sized supernet twice on Fashion-MNIST — with CA-DDKD (ViT teacher, KD +
spatial + frequency losses) and without (teacher.source="none") — with everything else equal.
Then for N subnets (the largest, the smallest and N-2 random, fixed seed) compares the accuracy
inherited from each supernet (masked mode + per-subnet BN recalibration, validation split) with
the accuracy of the same subnet trained alone from scratch for a fixed short budget, and reports
Kendall τ and Spearman ρ for both supernets, plus training images/s.

  python benchmarks/kd_ranking.py [--steps 400] [--subnets 8] [--standalone_steps 300]
      -> benchmarks/results/kd_ranking.json

Schema: {"with_kd": {"kendall_tau", "spearman_rho", "inherited_acc", "images_per_s", ...},
         "without_kd": {...}, "standalone_acc": [...], "archs": [...], "config": {...}}
The paper claims CA-DDKD improves ranking consistency; this reports what is measured.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from evonas_jax import data as data_lib  # noqa: E402
from evonas_jax.checkpoint import load_pytree  # noqa: E402
from evonas_jax.nn import init_supernet  # noqa: E402
from evonas_jax.nn.supernet import init_variables, subnet_model  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402
from evonas_jax.tasks import cross_entropy  # noqa: E402
from evonas_jax.supernet_train import evaluate, make_bn_step, make_eval_step  # noqa: E402
from evonas_jax.trainer import train_and_evaluate  # noqa: E402


def load_quickstart():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def train_standalone(space, arch, cfg, steps, seed):
  """Trains `arch` alone (sliced network, from scratch, CE) -> validation accuracy."""
  info = data_lib.dataset_info(cfg.data)
  model = subnet_model(space, arch, info.num_classes)
  variables = init_variables(model.spec, info.num_classes, jax.random.key(seed), info.image_shape)
  sched = optax.warmup_cosine_decay_schedule(0.0, cfg.optimizer.lr, min(50, steps // 5), steps,
                                             end_value=cfg.optimizer.lr * 0.01)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(sched, weight_decay=cfg.optimizer.weight_decay))
  params, bs = variables["params"], variables["batch_stats"]
  opt = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, bs, opt, x, y):
    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                mutable=["batch_stats"])
      return cross_entropy(logits, y), upd["batch_stats"]
    (loss, bs2), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), bs2, opt, loss

  it = data_lib.train_iterator(cfg.data, cfg.batch_size, seed=seed)
  for _ in range(steps):
    b = next(it)
    params, bs, opt, _ = step(params, bs, opt, b["image"], b["label"])
  ev = jax.jit(lambda v, x: model.apply(v, x))
  correct = total = 0.0
  for b in data_lib.eval_iterator(cfg.data, "validation", cfg.eval_batch_size):
    pred = np.argmax(np.asarray(ev({"params": params, "batch_stats": bs}, b["image"])), -1)
    correct += float(((pred == b["label"]) * b["mask"]).sum())
    total += float(b["mask"].sum())
  return correct / total


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=300, help="supernet steps (quickstart: 300)")
  ap.add_argument("--teacher_steps", type=int, default=150)
  ap.add_argument("--subnets", type=int, default=8)
  ap.add_argument("--standalone_steps", type=int, default=300)
  ap.add_argument("--workdir", default="")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "kd_ranking.json"))
  args = ap.parse_args()
  work = args.workdir or tempfile.mkdtemp(prefix="kd_ranking_")
  base = load_quickstart()
  base.num_steps = args.steps
  base.teacher.num_steps = args.teacher_steps
  space = get_space(base.space, base.preset)
  rng = np.random.default_rng(0)
  archs = [space.largest(), space.smallest()] + [
      space.decode(g) for g in space.sample(int(rng.integers(2**31)), args.subnets - 2)]

  t0 = time.time()
  standalone = []
  for i, a in enumerate(archs):
    acc = train_standalone(space, a, base, args.standalone_steps, seed=100 + i)
    standalone.append(acc)
    print(f"standalone {i}: {a.short()} val acc {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)

  out = {"standalone_acc": standalone, "archs": [a.to_dict() for a in archs],
         "config": {"supernet_steps": args.steps, "teacher_steps": args.teacher_steps,
                    "standalone_steps": args.standalone_steps, "subnets": args.subnets,
                    "dataset": "fashion_mnist", "split": "validation",
                    "device": f"{jax.devices()[0].platform} x{jax.device_count()}",
                    "physical_cores": os.cpu_count()}}
  for name, teacher in (("with_kd", "train"), ("without_kd", "none")):
    c = base.copy_and_resolve_references()
    c.teacher.source = teacher
    wd = os.path.join(work, name)
    res = train_and_evaluate(c, wd) if not os.path.exists(os.path.join(wd, "results.json")) \
        else json.load(open(os.path.join(wd, "results.json")))
    info = data_lib.dataset_info(c.data)
    model, v0 = init_supernet(space, info.num_classes, jax.random.key(0), info.image_shape)
    variables = load_pytree(wd, v0)
    eval_step, bn_step = make_eval_step(model), make_bn_step(model)
    calib_it = data_lib.train_iterator(c.data, c.eval_batch_size, seed=c.seed + 1)
    calib = [next(calib_it)["image"] for _ in range(c.bn_calibration_batches)]
    inherited = [evaluate(eval_step, variables, c.data, "validation", c.eval_batch_size, space, a,
                          bn_step=bn_step, calib_batches=calib) for a in archs]
    tau = stats.kendalltau(inherited, standalone).statistic
    rho = stats.spearmanr(inherited, standalone).statistic
    out[name] = {"kendall_tau": float(tau), "spearman_rho": float(rho),
                 "inherited_acc": inherited, "images_per_s": res.get("images_per_s_median"),
                 "train_wall_s": res.get("wall_seconds"), "teacher_val_acc":
                 res.get("teacher_val_acc")}
    print(f"{name}: tau {tau:.3f} rho {rho:.3f} inherited {np.round(inherited, 3).tolist()}",
          flush=True)
  out["wall_s"] = time.time() - t0
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps({k: out[k] for k in ("with_kd", "without_kd")}, indent=2))


if __name__ == "__main__":
  main()
