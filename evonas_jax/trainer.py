"""`train_and_evaluate(config, workdir)`: the teacher stage, then CA-DDKD supernet training.

Workdir layout (every file belongs to this one config; rerunning the same command resumes):
  config.json, metrics.jsonl      the run's config and one JSON row per log/eval event
  tensorboard/{supernet,teacher}  the same rows as TensorBoard scalars (config.tensorboard)
  teacher/checkpoints, teacher/final   the teacher stage (when config.teacher.source == "train")
  checkpoints/                    supernet train state: params (student + projectors),
                                  batch_stats, opt_state; meta: step, PST stage, seed, data state
  final/                          the supernet's student variables {"params", "batch_stats"}
                                  (what `search` loads)
  results.json, metrics.png       final accuracies, costs, timings, provenance (versions,
                                  git commit, devices)
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

from evonas_jax import parallel
from evonas_jax.checkpoint import TrainCheckpointer, abstract_like, load_pytree, save_pytree
from evonas_jax.loop import LoopSpec, run_loop
from evonas_jax.nn.cost import arch_cost
from evonas_jax.provenance import provenance
from evonas_jax.pst import PSTSchedule, sample_step_genomes
from evonas_jax.space import get_space
from evonas_jax.steps import ShardedTrainStep
from evonas_jax.supernet_loss import (DistillSetup, make_supernet_loss, make_teacher_loss,
                                      make_teacher_prologue)
from evonas_jax.supernet_train import (evaluate_task, make_bn_step, make_optimizer,
                                       make_task_eval_step, plot_metrics, print_summary)
from evonas_jax.task_runtime import make_runtime
from evonas_jax.train_config import engine_of, validate_train_config
from evonas_jax.workdir import MetricWriter, open_workdir, write_json_atomic

log = logging.getLogger(__name__)


def _dtype(name):
  return None if name == "float32" else jnp.bfloat16


def _iter_state_for_this_process(state: dict) -> dict:
  """Data-iterator state saved by process 0, re-targeted at this process's shard (every host
  has consumed the same number of batches; only the shard index differs)."""
  st = json.loads(json.dumps(state))
  if "process_index" in st.get("fingerprint", {}):
    st["fingerprint"]["process_index"] = jax.process_index()
  return st


def _train_iterator(config, mesh, seed, return_index=False, rt=None):
  """Per-host shard of the global batch ("per_host") or every host reading the global batch and
  keeping its rows ("global_slice": bitwise the single-process batch, for small data)."""
  it = (rt or make_runtime(config)).train_iterator
  if config.parallel.data_sharding == "per_host" and jax.process_count() > 1:
    return it(config.data, config.batch_size // jax.process_count(), seed,
              process_index=jax.process_index(), process_count=jax.process_count(),
              return_index=return_index), "per_host"
  # Explicit process 0 of 1: the data API defaults to this JAX process's shard.
  return it(config.data, config.batch_size, seed, process_index=0, process_count=1,
            return_index=return_index), "global_slice"


def _restore(ckpt, state, train_iter):
  """Restores the newest checkpoint into (state, iterator); returns (state, start_step, meta)."""
  r = ckpt.restore_latest(abstract_like(state))
  if r is None:
    return state, 0, None
  state, meta, step = r
  train_iter.set_state(_iter_state_for_this_process(meta["data_iterator"]))
  print(f"[evonas_jax] resuming {os.path.basename(os.path.dirname(ckpt.directory)) or 'run'} "
        f"from step {step} ({ckpt.directory})", flush=True)
  return state, step, meta


def _calib_batch_size(config) -> int:
  # Configs written before bn_calibration_batch_size existed calibrated on eval-size batches.
  return config.get("bn_calibration_batch_size", config.eval_batch_size)


# --------------------------------------------------------------------------------------- teacher
def train_teacher(config, workdir, mesh, info, writer, rt=None):
  """Teacher stage. Returns (teacher module, frozen variables) or (None, None)."""
  tc = config.teacher
  if tc.source in ("none", "store"):
    return None, None
  rt = rt or make_runtime(config)
  teacher = rt.teacher(tc.model)
  x0 = jnp.zeros((1, *info.image_shape), jnp.float32)
  init = jax.jit(functools.partial(teacher.init, train=False))(jax.random.key(config.seed + 7), x0)
  if tc.source == "checkpoint":
    variables = load_pytree(tc.checkpoint, {"params": init["params"]})
    print(f"[evonas_jax] teacher loaded from {tc.checkpoint}", flush=True)
    return teacher, parallel.replicate(mesh, variables)
  tdir = os.path.join(workdir, "teacher")
  final = os.path.join(tdir, "final")
  if os.path.isdir(final):
    print(f"[evonas_jax] teacher: reusing the finished teacher in {final}", flush=True)
    return teacher, parallel.replicate(mesh, load_pytree(final, {"params": init["params"]}))
  n_params = sum(x.size for x in jax.tree.leaves(init["params"]))
  print(f"[evonas_jax] teacher: ViT dim {tc.model.dim} depth {tc.model.depth} patch "
        f"{tc.model.patch_size}, {n_params / 1e6:.2f} M params, {tc.num_steps} steps", flush=True)
  tx, sched = make_optimizer(tc.optimizer, tc.num_steps)
  state = parallel.replicate(mesh, {"params": init["params"], "batch_stats": {},
                                    "opt_state": tx.init(init["params"])})
  step_fn = ShardedTrainStep(make_teacher_loss(teacher, _dtype(config.compute_dtype), rt.task), tx,
                             mesh, target_shape=rt.target_shape)
  train_iter, mode = _train_iterator(config, mesh, config.seed + 11, rt=rt)
  ckpt = TrainCheckpointer(os.path.join(tdir, "checkpoints"), keep=config.keep_checkpoints)
  state, start, _ = _restore(ckpt, state, train_iter)
  if jax.process_index() == 0:   # rows (and TB events) after the checkpoint are redone now
    writer.rewind(start, stream="teacher")
  eval_step = jax.jit(lambda v, b: rt.task.eval_stats(teacher.apply(v, b["image"])[0], b))
  key = f"val_{rt.metric_short}"

  def eval_fn(st, step):
    from evonas_jax.tasks import sum_stats
    v = {"params": parallel.to_host(st["params"])}
    stats = None
    for b in rt.eval_iterator(config.data, "validation", config.eval_batch_size):
      stats = sum_stats(stats, eval_step(v, {k: x for k, x in b.items() if k != "index"}))
    return {key: rt.task.finalize(jax.device_get(stats))[rt.metric]}

  spec = LoopSpec("teacher", tc.num_steps, config.batch_size, config.log_every,
                  tc.eval_every, config.checkpoint_every,
                  f"Lower teacher.optimizer.lr (now {tc.optimizer.lr}) or set "
                  f"teacher.optimizer.grad_clip.")
  tw = _PrefixWriter(writer, "teacher_")
  state = run_loop(spec, step_fn=step_fn, state=state, extra={}, start_step=start,
                   train_iter=train_iter, mesh=mesh, data_mode=mode,
                   genomes_fn=lambda s: np.zeros((1, 1), np.int32),
                   rng=jax.random.key(config.seed + 13), lr_fn=lambda s: float(sched(s)), ckpt=ckpt,
                   meta_fn=lambda s: {"step": s, "data_iterator": train_iter.get_state()},
                   writer=tw, eval_fn=eval_fn)
  ckpt.close()
  acc = eval_fn(state, tc.num_steps)[key]
  if jax.process_index() == 0:
    writer.write(tc.num_steps, **{f"teacher_final_{key}": acc})
  print(f"[evonas_jax] teacher done: validation {rt.metric} {acc:.4f}", flush=True)
  variables = {"params": state["params"]}
  save_pytree(final, variables)
  return teacher, variables


class _PrefixWriter:
  def __init__(self, writer, prefix):
    self.writer, self.prefix = writer, prefix

  def write(self, step, **m):
    self.writer.write(step, **{self.prefix + k: v for k, v in m.items()})


# -------------------------------------------------------------------------------------- supernet
def open_teacher_store(config):
  """The precomputed-teacher store of `teacher.source="store"` (checked against the data)."""
  if config.teacher.source != "store":
    return None
  from evonas_jax.teacher_store import TeacherStore
  store = TeacherStore(config.teacher.store)
  store.check_data(config.data)      # refuses augmentation: features are of unaugmented images
  if config.distill.kd_ratio > 0 and not store.has_logits:
    raise ValueError(f"config.distill.kd_ratio = {config.distill.kd_ratio} but the teacher store "
                     f"{config.teacher.store} holds no logits; allowed: kd_ratio = 0 with it")
  print(f"[evonas_jax] teacher: precomputed store {config.teacher.store} "
        f"({store.num_examples} examples, features {store.feature_shape})", flush=True)
  return store


def build_supernet_state(config, space, info, teacher, teacher_vars, rng, store=None, rt=None):
  """Student (+ projector) modules and the initial variables (before replication)."""
  rt = rt or make_runtime(config)
  student_vars = rt.init_student(space, rng, config.drop_path_rate)
  params = {"student": student_vars["params"]}
  batch_stats = {"student": student_vars["batch_stats"]}
  projector = None
  d = config.distill
  if (teacher is not None or store is not None) and (d.alpha_spatial > 0
                                                      or d.alpha_frequency > 0):
    from evonas_jax.nn.projector import AttentionProjector
    x0 = jnp.zeros((1, *info.image_shape), jnp.float32)
    if store is not None:
      t_feat = jax.ShapeDtypeStruct((1, *store.feature_shape), jnp.float32)
    else:
      _, t_feat = jax.eval_shape(functools.partial(teacher.apply, train=False),
                                 jax.device_get(teacher_vars), x0)
    student_shell = rt.student(space)
    out = jax.eval_shape(functools.partial(student_shell.apply, return_features=True),
                         student_vars, x0)
    feats = out["features"] if isinstance(out, dict) else out[1]
    f = feats[d.student_stage]
    if f.shape[1] * f.shape[2] == 1 and d.alpha_frequency > 0:
      # With one student token the cross-attention projector outputs the same vector at every
      # teacher cell, so the mean-centred (frequency) projection is zero up to rounding noise,
      # which channel normalisation then blows up to unit vectors: a meaningless loss.
      raise ValueError(
          f"config.distill.student_stage = {d.student_stage}: that stage's feature is 1x1 for "
          f"{tuple(info.image_shape)} images, where the frequency loss is degenerate. Allowed: a "
          f"stage whose grid is larger than 1x1 (grids: {[tuple(x.shape[1:3]) for x in feats]}), "
          f"or distill.alpha_frequency = 0.")
    projector = AttentionProjector(teacher_grid=tuple(t_feat.shape[1:3]),
                                   teacher_dim=int(t_feat.shape[-1]),
                                   num_heads=d.projector.num_heads,
                                   softmax_scale=d.projector.softmax_scale,
                                   ffn_ratio=d.projector.ffn_ratio,
                                   bn_axis_name=parallel.DATA_AXIS)
    fz = jnp.zeros((1, *f.shape[1:]), jnp.float32)
    for name, k in (("proj_spatial", 1), ("proj_frequency", 2)):
      if (name == "proj_spatial" and d.alpha_spatial > 0) or (name == "proj_frequency"
                                                               and d.alpha_frequency > 0):
        v = jax.jit(functools.partial(projector.clone(bn_axis_name=None).init, train=False))(
            jax.random.fold_in(rng, k), fz)
        params[name] = v["params"]
        batch_stats[name] = v.get("batch_stats", {})
  return projector, params, batch_stats


def make_supernet_trainer(config, space, info, schedule, teacher, teacher_vars, mesh, rng,
                          verbose=False, tx=None, store=None, rt=None):
  """(step_fn, replicated initial state, lr schedule) of the supernet stage on `mesh`.

  tx: an optax transformation replacing the config's AdamW (tests use plain SGD: Adam turns
  the float noise of mathematically-zero gradients into +-lr steps).
  """
  rt = rt or make_runtime(config)
  rng, init_rng = jax.random.split(rng)
  projector, params, batch_stats = build_supernet_state(config, space, info, teacher,
                                                        teacher_vars, init_rng, store, rt)
  if config.init_from:
    src = load_pytree(config.init_from)
    params["student"] = _match(src["params"], params["student"], "params", config.init_from)
    batch_stats["student"] = _match(src.get("batch_stats", {}), batch_stats["student"],
                                    "batch_stats", config.init_from)
    print(f"[evonas_jax] student initialised from {config.init_from}", flush=True)
    _init_projectors(config.init_from, params, batch_stats)
  if verbose:
    n_params = sum(x.size for x in jax.tree.leaves(params["student"]))
    n_proj = sum(x.size for k, v in params.items() if k != "student"
                 for x in jax.tree.leaves(v))
    print(f"[evonas_jax] supernet params: {n_params / 1e6:.2f} M (+ projectors "
          f"{n_proj / 1e6:.2f} M)", flush=True)
  cfg_tx, sched = make_optimizer(config.optimizer, config.num_steps, schedule.stages)
  tx = tx or cfg_tx
  state = parallel.replicate(mesh, {"params": params, "batch_stats": batch_stats,
                                    "opt_state": tx.init(params)})
  student = rt.student(space, config.drop_path_rate, bn_axis_name=parallel.DATA_AXIS)
  d = config.distill
  has_teacher = teacher is not None or store is not None
  fixed = bool(tuple(config.get("fixed_subnet", ())))
  setup = DistillSetup(teacher=teacher, from_store=store is not None, projector=projector,
                       student_stage=d.student_stage,
                       kd_ratio=d.kd_ratio if has_teacher else 0.0,
                       alpha_spatial=d.alpha_spatial, alpha_frequency=d.alpha_frequency,
                       temperature=d.temperature, reduction=d.reduction,
                       # One fixed subnet per step: there is no larger subnet to distil from.
                       inplace_kd=(not fixed and config.sampling.rule == "sandwich"
                                   and config.sampling.inplace_kd),
                       inplace_kd_ratio=config.sampling.inplace_kd_ratio,
                       compute_dtype=_dtype(config.compute_dtype), task=rt.task)
  if engine_of(config) == "compiled":
    from evonas_jax.engine import EngineTrainStep
    step_fn = EngineTrainStep(student, space, setup, tx, mesh,
                              prologue_fn=make_teacher_prologue(setup),
                              target_shape=rt.target_shape, drop_path_rate=config.drop_path_rate)
  else:
    step_fn = ShardedTrainStep(make_supernet_loss(student, space, setup), tx, mesh,
                               prologue_fn=make_teacher_prologue(setup),
                               target_shape=rt.target_shape)
  return step_fn, state, sched


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the whole training job described by `config` in `workdir`; returns the results."""
  t_start = time.time()
  validate_train_config(config)
  from evonas_jax import compile_cache
  cache_dir = compile_cache.enable(config.get("compile_cache_dir", ""))
  compile_stats = compile_cache.CompileStats()
  is_main = jax.process_index() == 0
  workdir = open_workdir(workdir, config) if is_main else os.path.abspath(workdir)
  # metrics.jsonl + TensorBoard runs "supernet" and "teacher" (the rows prefixed "teacher_").
  writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True), run="supernet",
                        streams={"teacher": "teacher_"})
  space = get_space(config.space, config.preset)
  rt = make_runtime(config)
  info = rt.info
  mesh = parallel.make_data_mesh(config.parallel.num_devices)
  if info.fallback_used:
    log.warning("Training on the fallback dataset %s, not %s.", info.name, config.data.source)
  print(f"[evonas_jax] task {rt.name}; data: {info.name} ({info.num_classes} classes, image "
        f"{info.image_shape}, "
        f"splits {info.split_sizes}); mesh: {mesh.devices.size} x {mesh.devices.flat[0].platform} "
        f"devices over {jax.process_count()} process(es)", flush=True)
  print(f"[evonas_jax] space: {space.name}/{space.preset}, {space.genome_length} genes, "
        f"{space.size():.3e} subnets", flush=True)

  t_teacher = time.time()
  teacher, teacher_vars = train_teacher(config, workdir, mesh, info, writer, rt)
  t_teacher = time.time() - t_teacher

  # ---- supernet stage (or, with config.fixed_subnet, that one subnet)
  fixed = tuple(config.get("fixed_subnet", ()))
  if fixed:
    fixed_genome = space.validate(list(fixed))
    schedule = PSTSchedule(config.num_steps, enabled=False, k_max=1, k_final=1,
                           warmup_steps_if_disabled=config.optimizer.warmup_steps)
    genomes_fn = lambda s: fixed_genome[None]
    print(f"[evonas_jax] fixed subnet (no PST): {space.decode(fixed_genome).short()}", flush=True)
  else:
    schedule = PSTSchedule(config.num_steps, enabled=config.pst.enabled, k_max=config.pst.k_max,
                           k_final=config.pst.k_final, stages=list(config.pst.stages) or None,
                           warmup_steps_if_disabled=config.optimizer.warmup_steps)
    genomes_fn = lambda s: sample_step_genomes(space, schedule, s, config.seed,
                                               config.sampling.rule)
    print(f"[evonas_jax] PST: {schedule.describe()}; sampling rule {config.sampling.rule}",
          flush=True)
  rng = jax.random.key(config.seed)
  store = open_teacher_store(config)
  step_fn, state, sched = make_supernet_trainer(config, space, info, schedule, teacher,
                                                teacher_vars, mesh, rng, verbose=True, store=store,
                                                rt=rt)
  train_iter, mode = _train_iterator(config, mesh, config.seed, return_index=store is not None,
                                     rt=rt)
  ckpt = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  state, start, _ = _restore(ckpt, state, train_iter)
  if is_main:   # rows (and TB events) after the checkpoint are redone now
    writer.rewind(start)

  eval_model = rt.student(space)
  calib_iter = rt.train_iterator(config.data, _calib_batch_size(config), config.seed + 1,
                                 process_index=0, process_count=1)
  calib = [next(calib_iter)["image"] for _ in range(config.bn_calibration_batches)]
  metric, short = rt.metric, rt.metric_short
  if engine_of(config) == "compiled":
    from evonas_jax.engine import EngineEvaluator
    evaluator = EngineEvaluator(eval_model, space, rt.task)

    def ev(variables, split, arch, full=False):
      r = evaluator.evaluate(variables,
                             rt.eval_iterator(config.data, split, config.eval_batch_size), arch,
                             calib_batches=calib)
      return r if full else r[metric]
  else:
    eval_step, bn_step = make_task_eval_step(eval_model, rt.task), make_bn_step(eval_model)

    def ev(variables, split, arch, full=False):
      r = evaluate_task(eval_step, variables,
                        rt.eval_iterator(config.data, split, config.eval_batch_size), space,
                        arch, rt.task, bn_step=bn_step, calib_batches=calib)
      return r if full else r[metric]
  # The subnets every evaluation reports: the supernet's extremes, or the fixed subnet.
  reported = ((("subnet", space.decode(fixed_genome)),) if fixed else
              (("largest", space.largest()), ("smallest", space.smallest())))

  def student_vars(st):
    return {"params": parallel.to_host(st["params"]["student"]),
            "batch_stats": parallel.to_host(st["batch_stats"]["student"])}

  def eval_fn(st, step):
    v = student_vars(st)
    return {f"val_{short}_{n}": ev(v, split="validation", arch=a) for n, a in reported}

  def describe(step):
    st = schedule.stage_at(step)
    if fixed:
      return "fixed subnet"
    return f"PST stage {st.index} '{st.name}' (k={st.k}, steps {st.start}-{st.end - 1})"

  before_key = f"before_val_{short}_subnet"
  if fixed and start == 0 and is_main:
    # The starting point (the supernet's weights, exact BatchNorm statistics), so the run's
    # gain is in its own metrics; a resumed run finds this row in metrics.jsonl.
    writer.write(0, **{before_key: ev(student_vars(state), "validation", reported[0][1])})

  spec = LoopSpec("finetune" if fixed else "supernet", config.num_steps, config.batch_size,
                  config.log_every,
                  config.eval_every, config.checkpoint_every,
                  f"Lower optimizer.lr (now {config.optimizer.lr}), enable optimizer.grad_clip, "
                  f"or use compute_dtype='float32'.")
  teacher_extra = teacher_vars if teacher_vars is not None else {}
  state = run_loop(
      spec, step_fn=step_fn, state=state, extra=teacher_extra, start_step=start,
      train_iter=train_iter, mesh=mesh, data_mode=mode,
      genomes_fn=genomes_fn,
      rng=rng, lr_fn=lambda s: float(sched(s)), ckpt=ckpt,
      meta_fn=lambda s: {"step": s, "pst_stage": schedule.stage_at(max(s - 1, 0)).index,
                         "seed": config.seed, "data_iterator": train_iter.get_state()},
      writer=writer, eval_fn=eval_fn, describe_step=describe,
      batch_fn=None if store is None else functools.partial(add_store_outputs, store))
  ckpt.close()

  variables = student_vars(state)
  results = {"steps": config.num_steps, "dataset": info.name,
             "fallback_used": info.fallback_used, "devices": int(mesh.devices.size),
             "processes": jax.process_count(), "teacher": config.teacher.source,
             "task": rt.name, "metric": short, "subnets": {}}
  if teacher is not None:
    rows = [r for r in writer.read() if f"teacher_final_val_{short}" in r]
    if rows:
      results[f"teacher_val_{short}"] = rows[-1][f"teacher_final_val_{short}"]
  for name, arch in reported:
    cost = _subnet_cost(rt, space, arch, variables)
    val = ev(variables, "validation", arch, full=True)
    r = {"arch": arch.to_dict(), "genome": space.encode(arch).tolist(),
         f"val_{short}": val[metric], "macs": cost["macs"], "params": cost["params"]}
    if rt.dense:
      r["val_metrics"] = val
    if rt.has_split("test"):
      r[f"test_{short}"] = ev(variables, "test", arch)
    results["subnets"][name] = r
  if fixed:
    before = [r[before_key] for r in writer.read() if before_key in r]
    if before:
      results["subnets"]["subnet"][f"before_val_{short}"] = before[-1]
  rows = [r for r in writer.read() if "images_per_s" in r and "loss" in r]
  if rows:
    results["images_per_s_median"] = float(np.median([r["images_per_s"] for r in rows]))
  results["wall_seconds"] = time.time() - t_start
  # This process's time per stage (a resumed run counts only what it ran itself).
  results["stage_seconds"] = {"teacher": t_teacher,
                              "supernet": results["wall_seconds"] - t_teacher}
  results["engine"] = engine_of(config)
  results["provenance"] = provenance()
  results["compile"] = {**compile_stats.snapshot(), "cache_dir": cache_dir}
  if hasattr(step_fn, "backbone"):
    results["compile"]["engine_programs"] = len(step_fn.backbone.programs)
  c = results["compile"]
  print(f"[evonas_jax] XLA: {c['compiles']} compiles ({c['compile_s']:.0f} s), "
        f"{c['cache_hits']} loaded from the persistent cache {cache_dir or '(off)'}", flush=True)
  final = os.path.join(workdir, "final")
  if is_main:
    writer.write(config.num_steps, **{f"{k}_{n}": v[k] for n, v in results["subnets"].items()
                                      for k in (f"val_{short}", f"test_{short}") if k in v})
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("evonas_jax final check")
  exists = os.path.exists(final)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("evonas_jax final checked")
  if not exists:
    save_pytree(final, variables)
  if is_main:
    # results.json marks the run finished (a rerun then refuses the workdir), so it is written
    # last and atomically: a kill before it leaves a run that the rerun completes.
    plot_metrics(writer.read(), os.path.join(workdir, "metrics.png"), short)
    write_json_atomic(os.path.join(workdir, "results.json"), results, indent=2)
    print_summary(results, workdir)
  writer.close()
  if jax.process_count() > 1:
    # Process 0 alone writes results.json and draws the plots; without this barrier the other
    # processes reach jax.distributed.shutdown first and, on a loaded machine, its barrier
    # (shutdown_timeout_seconds) expired while process 0 was still plotting (the run aborted).
    multihost_utils.sync_global_devices("evonas_jax results written")
  return results


def _subnet_cost(rt, space, arch, variables) -> dict:
  """{"macs", "params"} of the standalone subnet: analytic for classification; for a dense model
  from XLA's cost analysis of the sliced network (backbone + decoder)."""
  if not rt.dense:
    c = arch_cost(space, arch, rt.info.image_shape, rt.info.num_classes)
    return {"macs": int(c.macs), "params": int(c.params)}
  from evonas_jax.nn.dense import dense_cost, extract_dense_subnet
  from evonas_jax.nn.supernet import subnet_spec
  sub = rt.student(space, spec=subnet_spec(space, arch))
  c = dense_cost(sub, extract_dense_subnet(variables, space, arch), rt.info.image_shape)
  return {"macs": int(c["macs"]), "params": int(c["params"])}


def add_store_outputs(store, batch: dict) -> dict:
  """Host batch + the stored teacher outputs of its examples ("t_feat", "t_logits")."""
  out = dict(batch, t_feat=store.lookup(batch["index"]))
  out["t_logits"] = (store.lookup_logits(batch["index"]) if store.has_logits else
                     np.zeros((len(batch["index"]), 1), np.float32))
  return out


def _init_projectors(init_from: str, params: dict, batch_stats: dict) -> None:
  """Copies the CA-DDKD projectors (params and BatchNorm statistics) of `init_from`'s newest
  train checkpoint into `params` / `batch_stats` in place, where one exists and its projector
  shapes fit; otherwise the projectors keep their fresh initialisation (printed)."""
  names = [k for k in params if k != "student"]
  if not names:
    return
  ckdir = os.path.join(os.path.abspath(init_from), "checkpoints")
  steps = sorted(int(d) for d in (os.listdir(ckdir) if os.path.isdir(ckdir) else ())
                 if d.isdigit())
  if not steps:
    print(f"[evonas_jax] projectors {names}: freshly initialised ({init_from} has no train "
          "checkpoint)", flush=True)
    return
  import orbax.checkpoint as ocp
  path = os.path.join(ckdir, str(steps[-1]), "state")
  try:
    state = ocp.StandardCheckpointer().restore(path)
  except Exception as e:   # noqa: BLE001 - an unreadable checkpoint only costs the projectors
    print(f"[evonas_jax] projectors {names}: freshly initialised (could not read {path}: "
          f"{type(e).__name__})", flush=True)
    return
  for tree, src in ((params, state.get("params", {})), (batch_stats, state.get("batch_stats", {}))):
    for n in names:
      if n not in src or n not in tree:
        continue
      t_leaves, t_def = jax.tree.flatten(tree[n])
      s_leaves = jax.tree.leaves(src[n])
      if (jax.tree.structure(src[n]) != t_def
          or [x.shape for x in s_leaves] != [x.shape for x in t_leaves]):
        print(f"[evonas_jax] projector {n}: freshly initialised (the checkpoint's does not fit "
              "this distillation setup)", flush=True)
        continue
      tree[n] = jax.tree.unflatten(t_def, [jnp.asarray(x) for x in s_leaves])
  print(f"[evonas_jax] projectors {names} initialised from {path}", flush=True)


def _match(src, target, what, path):
  """Checks that a loaded tree has the target's structure and shapes; clear error otherwise."""
  s_leaves = jax.tree_util.tree_flatten_with_path(src)[0]
  t_leaves = jax.tree_util.tree_flatten_with_path(target)[0]
  s_map = {jax.tree_util.keystr(p): v for p, v in s_leaves}
  missing = [jax.tree_util.keystr(p) for p, _ in t_leaves if jax.tree_util.keystr(p) not in s_map]
  bad = [jax.tree_util.keystr(p) for p, v in t_leaves
         if jax.tree_util.keystr(p) in s_map and s_map[jax.tree_util.keystr(p)].shape != v.shape]
  if missing or bad:
    raise ValueError(f"init_from={path}: its {what} do not fit this supernet (missing "
                     f"{missing[:5]}{'...' if len(missing) > 5 else ''}, shape mismatch "
                     f"{bad[:5]}); was it trained with the same space/preset/data?")
  return jax.tree.unflatten(jax.tree.structure(target),
                            [jnp.asarray(s_map[jax.tree_util.keystr(p)]) for p, _ in t_leaves])
