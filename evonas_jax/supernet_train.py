"""Supernet training with random subnets per step (single device; the foundation trainer).

Each step draws `subnets_per_step` random genomes from the space (host numpy, seeded by step),
turns them into masks inside the compiled step, and accumulates the cross-entropy gradient of
every subnet on the same batch (official PST step, research §3.5) through one `lax.scan`, so the
network is traced once whatever k is. Masked mode: one compile serves every subnet.
Distillation, shard_map data parallelism and checkpoint/resume belong to the CA-DDKD trainer.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evonas_jax import data as data_lib
from evonas_jax.nn import init_supernet
from evonas_jax.nn.cost import arch_cost
from evonas_jax.space import Arch, arch_masks, genome_to_masks, get_space
from evonas_jax.workdir import MetricWriter, open_workdir

log = logging.getLogger(__name__)


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay, global-norm clipping."""
  sched = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, min(cfg.warmup_steps, max(num_steps - 1, 1)), max(num_steps, 2),
      end_value=cfg.lr * cfg.final_lr_fraction)
  tx = optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx, sched


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def make_train_step(model, space, tx):
  """(params, batch_stats, opt_state, images, labels, genomes (k, G), rng) -> new state, metrics."""

  def loss_fn(params, batch_stats, images, labels, genomes, rng):
    # A Python loop (unrolled, k is small and static): lax.scan over the whole network made
    # XLA:CPU's backward ~30x slower than the unrolled form.
    keys = jax.random.split(rng, genomes.shape[0])
    bs, total, losses, accs = batch_stats, 0.0, [], []
    for i in range(genomes.shape[0]):
      logits, upd = model.apply({"params": params, "batch_stats": bs}, images,
                                genome_to_masks(space, genomes[i]), train=True,
                                rngs={"dropout": keys[i]}, mutable=["batch_stats"])
      bs = upd["batch_stats"]
      losses.append(cross_entropy(logits, labels))
      accs.append(jnp.mean(jnp.argmax(logits, -1) == labels))
      total = total + losses[-1]
    return total / genomes.shape[0], (bs, jnp.stack(losses), jnp.stack(accs))

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, images, labels, genomes, rng):
    (loss, (bs, losses, accs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels, genomes, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "train_acc": accs.mean(), "grad_norm": optax.global_norm(grads)}
    return params, bs, opt_state, metrics
  return step


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
  """BatchNorm running statistics for one subnet (OFA-style recalibration).

  The supernet's BN statistics are an average over all sampled subnets, which can be far from
  any one subnet's (the official code never recalibrates; measured here: the smallest subnet
  dropped to chance without it). Running `len(batches)` train-mode forwards with momentum 0.9
  leaves < 0.9**n of the shared statistics.
  """
  bs = variables["batch_stats"]
  for images in batches:
    bs = bn_step({**variables, "batch_stats": bs}, images, masks)
  return {**variables, "batch_stats": bs}


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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the supernet described by `config`; returns (and writes) the final results."""
  t_start = time.time()
  workdir = open_workdir(workdir, config)
  writer = MetricWriter(workdir)
  space = get_space(config.space, config.preset)
  info = data_lib.dataset_info(config.data)
  if info.fallback_used:
    log.warning("Training on the fallback dataset %s, not %s.", info.name, config.data.source)
  print(f"[evonas_jax] data: {info.name} ({info.num_classes} classes, image {info.image_shape}, "
        f"splits {info.split_sizes})", flush=True)
  print(f"[evonas_jax] space: {space.name}/{space.preset}, {space.genome_length} genes, "
        f"{space.size():.3e} subnets", flush=True)

  rng = jax.random.key(config.seed)
  rng, init_rng = jax.random.split(rng)
  model, variables = init_supernet(space, info.num_classes, init_rng, info.image_shape,
                                   drop_path_rate=config.drop_path_rate)
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  print(f"[evonas_jax] supernet params: {n_params / 1e6:.2f} M", flush=True)
  tx, sched = make_optimizer(config.optimizer, config.num_steps)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  train_step = make_train_step(model, space, tx)
  eval_step = make_eval_step(model)
  bn_step = make_bn_step(model)
  calib_iter = data_lib.train_iterator(config.data, config.batch_size, seed=config.seed + 1)
  calib = [next(calib_iter)["image"] for _ in range(config.bn_calibration_batches)]
  ev = functools.partial(evaluate, eval_step, data_cfg=config.data,
                         batch_size=config.eval_batch_size, space=space, bn_step=bn_step,
                         calib_batches=calib)
  train_iter = data_lib.train_iterator(config.data, config.batch_size, seed=config.seed)
  largest, smallest = space.largest(), space.smallest()

  from tqdm.auto import tqdm
  bar = tqdm(range(config.num_steps), desc="supernet", unit="step", dynamic_ncols=True,
             mininterval=2.0)
  window_t, window_imgs = time.time(), 0
  history = []
  for step in bar:
    batch = next(train_iter)
    genomes = space.sample(np.random.default_rng([config.seed, step]).integers(2**31),
                           num=config.subnets_per_step)
    params, batch_stats, opt_state, m = train_step(
        params, batch_stats, opt_state, batch["image"], batch["label"], genomes,
        jax.random.fold_in(rng, step))
    window_imgs += config.batch_size
    if (step + 1) % config.log_every == 0 or step == config.num_steps - 1:
      m = jax.device_get(m)
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(
            f"loss became {m['loss']} at step {step + 1}; stopping. Lower optimizer.lr "
            f"(now {config.optimizer.lr}) or enable optimizer.grad_clip.")
      ips = window_imgs / (time.time() - window_t)
      window_t, window_imgs = time.time(), 0
      writer.write(step + 1, lr=sched(step), images_per_s=ips, **m)
      bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['train_acc']:.3f}", ips=f"{ips:.0f}")
    if (step + 1) % config.eval_every == 0 and step + 1 < config.num_steps:
      v = {"params": params, "batch_stats": batch_stats}
      accs = {f"val_acc_{n}": ev(v, split="validation", arch=a)
              for n, a in (("largest", largest), ("smallest", smallest))}
      writer.write(step + 1, **accs)
      history.append({"step": step + 1, **accs})
      bar.write(f"step {step + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
  bar.close()

  variables = {"params": params, "batch_stats": batch_stats}
  results = {"train_seconds": time.time() - t_start, "steps": config.num_steps,
             "dataset": info.name, "fallback_used": info.fallback_used, "subnets": {}}
  for name, arch in (("largest", largest), ("smallest", smallest)):
    cost = arch_cost(space, arch, info.image_shape, info.num_classes)
    results["subnets"][name] = {
        "arch": arch.to_dict(), "genome": space.encode(arch).tolist(),
        "val_acc": ev(variables, split="validation", arch=arch),
        "test_acc": ev(variables, split="test", arch=arch),
        "macs": cost.macs, "params": cost.params}
  results["wall_seconds"] = time.time() - t_start
  writer.write(config.num_steps, **{f"{k}_{n}": v[k] for n, v in results["subnets"].items()
                                    for k in ("val_acc", "test_acc")})
  save_params(os.path.join(workdir, "final"), variables)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot_metrics(writer.read(), os.path.join(workdir, "metrics.png"))
  print_summary(results, workdir)
  return results


def save_params(path: str, variables) -> None:
  """Final supernet variables as an orbax checkpoint (restore with orbax StandardCheckpointer)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, jax.device_get(variables))
  ckptr.wait_until_finished()


def print_summary(results: dict, workdir: str) -> None:
  print("\n subnet    | val acc | test acc |    MACs    | params")
  print("-----------+---------+----------+------------+--------")
  for n, r in results["subnets"].items():
    print(f" {n:<9} | {r['val_acc']:.4f}  | {r['test_acc']:.4f}   | {r['macs'] / 1e6:8.2f} M "
          f"| {r['params'] / 1e6:.3f} M")
  print(f"\n{results['steps']} steps in {results['wall_seconds']:.0f} s; outputs in {workdir}")


def plot_metrics(rows: list[dict], path: str) -> None:
  """Training loss and validation accuracy curves."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
  tr = [r for r in rows if "loss" in r]
  a1.plot([r["step"] for r in tr], [r["loss"] for r in tr])
  a1.set(xlabel="step", ylabel="train loss (mean over sampled subnets)", yscale="log")
  for n in ("largest", "smallest"):
    ev = [r for r in rows if f"val_acc_{n}" in r]
    a2.plot([r["step"] for r in ev], [r[f"val_acc_{n}"] for r in ev], marker="o", label=n)
  a2.set(xlabel="step", ylabel="validation accuracy")
  a2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
