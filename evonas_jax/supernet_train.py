"""Supernet evaluation and optimizer helpers shared by the trainer, search and benchmarks.

`make_optimizer` (AdamW, warmup + cosine, optional per-PST-stage restarts), per-subnet BatchNorm
recalibration (`make_bn_step`, `recalibrate_bn`), masked-mode evaluation (`make_eval_step`,
`evaluate`) and the run summary/plot. The training loop itself is `evonas_jax.trainer`.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import optax

from evonas_jax import data as data_lib
from evonas_jax.space import arch_masks

log = logging.getLogger(__name__)


def make_optimizer(cfg, num_steps: int, stages=None):
  """AdamW (optax) with linear warmup + cosine decay and optional global-norm clipping.

  stages: PST stages (evonas_jax.pst.Stage); with `cfg.restart_per_stage` the schedule restarts
  at every stage (the official per-stage runs), each stage warming up for its own warmup steps.
  Returns (tx, schedule) with schedule(step) -> lr.
  """
  def wc(n, warm):
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(min(warm, n - 1), 0), max(n, 2), end_value=cfg.lr * cfg.final_lr_fraction)
  if stages and len(stages) > 1 and cfg.get("restart_per_stage", False):
    sched = optax.join_schedules([wc(st.num_steps, st.warmup_steps or cfg.warmup_steps)
                                  for st in stages], [st.start for st in stages[1:]])
  else:
    sched = wc(num_steps, cfg.warmup_steps)
  tx = optax.adamw(sched, b1=0.9, b2=0.999, eps=cfg.get("eps", 1e-8),
                   weight_decay=cfg.weight_decay)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx, sched


def make_eval_step(model):
  @jax.jit
  def step(variables, images, labels, mask, masks):
    logits = model.apply(variables, images, masks)
    correct = (jnp.argmax(logits, -1) == labels) * mask
    return correct.sum(), mask.sum()
  return step


def make_bn_step(model):
  @jax.jit
  def step(variables, images, masks):
    _, upd = model.apply(variables, images, masks, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(0)})
    return upd["batch_stats"]
  return step


def recalibrate_bn(bn_step, variables, batches, masks):
  """variables with one subnet's exact BatchNorm statistics (`evonas_jax.evaluate.bn`: reset,
  then the pooled mean / variance of every BN input over the calibration `batches`).

  The supernet's BN statistics are an average over all sampled subnets, which can be far from
  any one subnet's (the official code never recalibrates; measured here: the smallest subnet
  dropped to chance without it). bn_step: `make_bn_step(model)`; masks: the subnet's masks.
  """
  from evonas_jax.evaluate import recalibrated
  return recalibrated(lambda bs, images: bn_step({**variables, "batch_stats": bs}, images, masks),
                      variables, batches)


def evaluate(eval_step, variables, data_cfg, split, batch_size, space, arch,
             bn_step=None, calib_batches=()) -> float:
  masks = arch_masks(space, arch)
  if bn_step is not None and len(calib_batches):
    variables = recalibrate_bn(bn_step, variables, calib_batches, masks)
  correct = total = 0.0
  for batch in data_lib.eval_iterator(data_cfg, split, batch_size):
    c, n = eval_step(variables, batch["image"], batch["label"], batch["mask"], masks)
    correct, total = correct + float(c), total + float(n)
  return correct / max(total, 1.0)


def make_task_eval_step(model, task):
  """Jitted (variables, batch, masks) -> the task's per-batch metric sums (`tasks.eval_stats`)."""
  @jax.jit
  def step(variables, batch, masks):
    out = task.eval_output(lambda x: model.apply(variables, x, masks), batch["image"])
    return task.eval_stats(out, batch)   # eval_output: the depth task's flip TTA when on
  return step


def evaluate_task(step, variables, batches, space, arch, task, bn_step=None,
                  calib_batches=()) -> dict:
  """The task's metrics (`task.finalize`: accuracy / depth metrics / mIoU, plus "error") of one
  subnet in masked mode over `batches` (dicts with "image", the targets and "mask"), after
  per-subnet BatchNorm recalibration on `calib_batches` (images)."""
  from evonas_jax.tasks import sum_stats
  masks = arch_masks(space, arch)
  if bn_step is not None and len(calib_batches):
    variables = recalibrate_bn(bn_step, variables, calib_batches, masks)
  stats = None
  for batch in batches:
    b = {k: v for k, v in batch.items() if k != "index"}
    stats = sum_stats(stats, step(variables, b, masks))
  return task.finalize(jax.device_get(stats))


def save_params(path: str, variables) -> None:
  """Final supernet variables as an orbax checkpoint (restore with orbax StandardCheckpointer)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, jax.device_get(variables))
  ckptr.wait_until_finished()


def print_summary(results: dict, workdir: str) -> None:
  m = results.get("metric", "acc")
  print(f"\n subnet    | val {m:<7} | test {m:<7} |    MACs    | params")
  print("-----------+-------------+--------------+------------+--------")
  for n, r in results["subnets"].items():
    test = r.get(f"test_{m}")
    test = f"{test:.4f}" if test is not None else "  -   "
    print(f" {n:<9} | {r[f'val_{m}']:.4f}      | {test}       | {r['macs'] / 1e6:8.2f} M "
          f"| {r['params'] / 1e6:.3f} M")
    if f"before_val_{m}" in r:
      print(f"   (before fine-tuning: val {m} {r[f'before_val_{m}']:.4f})")
  print(f"\n{results['steps']} steps in {results['wall_seconds']:.0f} s; outputs in {workdir}")


def plot_metrics(rows: list[dict], path: str, metric: str = "acc") -> None:
  """Training loss and validation metric curves (metric: "acc", "abs_rel", "miou")."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
  tr = [r for r in rows if "loss" in r]
  a1.plot([r["step"] for r in tr], [r["loss"] for r in tr])
  a1.set(xlabel="step", ylabel="train loss (mean over sampled subnets)", yscale="log")
  for n in ("largest", "smallest", "subnet"):   # "subnet": a fixed-subnet (finetune) run
    ev = [r for r in rows if f"val_{metric}_{n}" in r or f"before_val_{metric}_{n}" in r]
    if ev:
      a2.plot([r["step"] for r in ev],
              [r.get(f"val_{metric}_{n}", r.get(f"before_val_{metric}_{n}")) for r in ev],
              marker="o", label=n)
  a2.set(xlabel="step", ylabel=f"validation {metric}")
  a2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
