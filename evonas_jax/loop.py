"""The step loop shared by the teacher and supernet stages: data, progress, logging, checkpoints.

Resumable by construction: everything a step depends on is a function of (seed, global step) or
lives in the checkpoint (state, data-iterator position), so a run killed at any point and
restarted from its last checkpoint reproduces the uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from evonas_jax import parallel


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient."""


@dataclasses.dataclass
class LoopSpec:
  name: str                       # "teacher" | "supernet" (progress-bar label, metric prefix)
  num_steps: int
  batch_size: int                 # global
  log_every: int
  eval_every: int
  checkpoint_every: int
  nan_hint: str                   # what to change when the loss goes NaN


def run_loop(spec: LoopSpec, *, step_fn, state, extra, start_step: int, train_iter, mesh,
             data_mode: str, genomes_fn: Callable[[int], np.ndarray], rng,
             lr_fn: Callable[[int], float], ckpt, meta_fn: Callable[[int], dict], writer,
             eval_fn: Callable | None = None, describe_step: Callable[[int], str] | None = None,
             batch_fn: Callable[[dict], dict] | None = None):
  """Runs steps [start_step, spec.num_steps); returns the final state.

  genomes_fn(step) -> (k, G) int32 (ignored by the teacher); eval_fn(state, step) -> dict of
  validation metrics; meta_fn(step) -> JSON meta saved with each checkpoint (step = steps done);
  batch_fn(host batch) -> host batch adds per-example inputs (stored teacher outputs).
  """
  from tqdm.auto import tqdm
  sl = parallel.local_batch_slice(mesh, spec.batch_size)
  is_main = jax.process_index() == 0
  bar = tqdm(range(start_step, spec.num_steps), desc=spec.name, unit="step", initial=start_step,
             total=spec.num_steps, dynamic_ncols=True, mininterval=2.0, disable=not is_main)
  window_t, window_imgs, pending = time.time(), 0, None
  last_desc = None

  def check(step_done, m):
    if float(parallel.to_host(m["finite"])) < 1.0:
      raise NonFiniteLossError(
          f"[{spec.name}] loss or gradient became NaN/inf at step {step_done}; training stopped "
          f"and the update was not applied. The last good checkpoint is kept (steps "
          f"{ckpt.steps()} in {ckpt.directory}). {spec.nan_hint}")

  try:
    for step in bar:
      if describe_step is not None and is_main:
        d = describe_step(step)
        if d != last_desc:
          bar.write(f"[{spec.name}] step {step}: {d}")
          last_desc = d
      batch = next(train_iter)
      if data_mode == "global_slice":
        batch = {k: v[sl] for k, v in batch.items()}
      if batch_fn is not None:   # e.g. stored teacher outputs looked up by example index
        batch = batch_fn(batch)
      batch = parallel.shard_batch(mesh, {k: v for k, v in batch.items() if k != "index"})
      genomes = np.asarray(genomes_fn(step), np.int32)
      state, m = step_fn(state, extra, batch, genomes, jax.random.fold_in(rng, step))
      # Check the previous step's finiteness flag after dispatching this one (keeps the pipeline
      # busy); a non-finite step does not change the state, so the lag loses nothing.
      if pending is not None:
        check(*pending)
      pending = (step + 1, m)
      window_imgs += spec.batch_size
      done = step + 1
      if done % spec.log_every == 0 or done == spec.num_steps:
        m = parallel.to_host(m)
        check(done, m)
        ips = window_imgs / max(time.time() - window_t, 1e-9)
        window_t, window_imgs = time.time(), 0
        if is_main:
          writer.write(done, lr=lr_fn(step), images_per_s=ips,
                       **{k: v for k, v in m.items() if k != "finite"})
          # The task's training accuracy when it has one (classification: train_acc,
          # segmentation: train_pixel_acc; depth has none).
          acc = {k: f"{float(m[k]):.3f}" for k in ("train_acc", "train_pixel_acc") if k in m}
          bar.set_postfix(loss=f"{float(m['loss']):.3f}", **acc, ips=f"{ips:.0f}")
      if eval_fn is not None and done % spec.eval_every == 0 and done < spec.num_steps:
        check(*pending)
        res = eval_fn(state, done)
        if is_main:
          writer.write(done, **res)
          bar.write(f"[{spec.name}] step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
        window_t = time.time()
      if done % spec.checkpoint_every == 0 or done == spec.num_steps:
        check(*pending)
        ckpt.save(done, state, meta_fn(done))
    if pending is not None:
      check(*pending)
  except (NonFiniteLossError, KeyboardInterrupt):
    # Let in-flight asynchronous checkpoint writes finish: the last good checkpoint must survive.
    bar.close()
    ckpt.wait()
    raise
  bar.close()
  ckpt.wait()
  return state
