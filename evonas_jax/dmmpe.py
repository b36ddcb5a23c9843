"""DMMPE: multi-model parallel evaluation of candidate subnets, and the data-parallel baseline.

Both evaluators compute the same thing for every candidate genome (research/evonas.md §5):

  1. per-candidate BatchNorm recalibration: the exact statistics of the candidate's BN inputs
     over fixed calibration batches (`evonas_jax.evaluate.bn`, the one procedure training
     evaluation and export use; without it small subnets evaluate near chance);
  2. top-1 accuracy of the masked supernet on a fixed set of validation batches.

They differ only in how the work is spread over devices:

* `DMMPEEvaluator`: candidates are cut into groups; a group runs as ONE compiled call that vmaps
  the masked supernet over the group's masks, with the candidate axis sharded over the devices
  (shard_map; no device talks to another: each evaluates its own candidates on its own copy of
  the data). Two layouts of the device pool:
  - "pool" (default): one ("candidate",) mesh of every device, groups of
    `group_size * (devices / devices_per_group)` candidates: the same candidates in flight as
    the sub-mesh layout, but ONE executable for the whole pool. On XLA:CPU every sub-mesh of the
    other layout compiles its own executable (the compile cache keys on the device assignment
    there; on GPU it does not), which made DMMPE's compile 7x the baseline's.
  - "submeshes": the pool split into disjoint ("candidate",) sub-meshes of `devices_per_group`
    devices, groups of `group_size`; one worker thread per sub-mesh pulls groups from a shared
    queue (dynamic load balancing, as the official workers pull tasks; JAX releases the GIL while
    a computation runs, so sub-meshes work concurrently). It pays when candidates differ in cost,
    which masked mode's do not.
  The eval and calibration data live on every device once (put there when the evaluator is
  built). Results are gathered in candidate order.
* `EngineEvaluatorPool` ("engine"): the same pool of disjoint sub-meshes and worker threads, but
  each worker evaluates one candidate at a time on the compiled engine (`evonas_jax.engine`) at
  the candidate's own widths and depth (the batch data-parallel over the sub-mesh's devices), so
  a small candidate costs what it computes instead of the full supernet. Programs are keyed by
  width signature (bounded by the space), shared by every candidate and generation.
* `DataParallelEvaluator`: the conventional baseline; one candidate at a time, every batch sharded
  over a ("data",) mesh of all devices. It is a sharded `jit`, not a shard_map: BatchNorm's batch
  statistics and the correct-count sum then keep their global meaning (XLA inserts the
  all-reduces), so the baseline computes exactly what DMMPE computes.

Both deduplicate: a cache {genome bytes: accuracy} (a plain dict, checkpointed by the search)
answers archs seen before, and duplicates within one call are evaluated once.

The search evaluates on the *validation* split, never on test. (The official code used the test
split as the search fitness, research §4 "Fitness data"; we do not repeat that leak.)
"""
from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from evonas_jax import parallel_pool
from evonas_jax.evaluate import DEFAULT_CALIB_BATCH_SIZE, DEFAULT_CALIB_BATCHES
from evonas_jax.space import SearchSpace, genome_to_masks

EVALUATORS = ("dmmpe", "data_parallel", "engine")
DMMPE_LAYOUTS = ("pool", "submeshes")
ALLOWED_SPLITS = ("validation", "train")


@dataclasses.dataclass
class EvalData:
  """Fixed data every candidate is scored on (host numpy).

  calib:  f32 (n_calib, Bc, H, W, C)  BatchNorm calibration batches (train split, augmented).
  images: f32 (n_eval, B, H, W, C)    evaluation batches.
  labels: (n_eval, B, ...)            the task's targets, batch key `target_key`: class labels
                                      i32 (n_eval, B); depth f32 (n_eval, B, H, W); label maps
                                      i32 (n_eval, B, H, W)
  mask:   f32 (n_eval, B)             0 marks padding in the last batch.
  """
  calib: np.ndarray
  images: np.ndarray
  labels: np.ndarray
  mask: np.ndarray
  target_key: str = "label"

  def __post_init__(self):
    self.calib = np.asarray(self.calib, np.float32)
    self.images = np.asarray(self.images, np.float32)
    self.labels = np.asarray(self.labels, np.int32 if self.target_key == "label" else np.float32)
    self.mask = np.asarray(self.mask, np.float32)
    if self.calib.ndim != 5 or self.images.ndim != 5:
      raise ValueError(f"EvalData: calib {self.calib.shape} and images {self.images.shape} must be "
                       "(num_batches, batch, H, W, C)")
    if self.labels.shape[:2] != self.images.shape[:2] or self.mask.shape != self.images.shape[:2]:
      raise ValueError(f"EvalData: labels {self.labels.shape} / mask {self.mask.shape} must be "
                       f"{self.images.shape[:2]}")

  @property
  def num_examples(self) -> int:
    return int(self.mask.sum())


def load_eval_data(data_cfg, *, split: str = "validation", num_eval_batches: int | None = None,
                   eval_batch_size: int = 500, calib_batches: int = DEFAULT_CALIB_BATCHES,
                   calib_batch_size: int = DEFAULT_CALIB_BATCH_SIZE, seed: int = 0,
                   rt=None) -> EvalData:
  """Reads the first `num_eval_batches` batches of `split` (None or 0: all) and `calib_batches`
  augmented train batches (seeded) into host memory. rt: a `task_runtime.TaskRuntime` for
  dense tasks (default: classification data)."""
  if rt is None:
    from evonas_jax import data as data_lib
    eval_it, train_it, key = data_lib.eval_iterator, data_lib.train_iterator, "label"
  else:
    eval_it, key = rt.eval_iterator, ("depth" if rt.name == "depth" else "label")
    train_it = lambda cfg, bs, seed: rt.train_iterator(cfg, bs, seed, 0, 1)
  if split not in ALLOWED_SPLITS:
    raise ValueError(f"split={split!r} is not allowed for search fitness: choose one of "
                     f"{ALLOWED_SPLITS} (the test split is reserved for the final report)")
  if calib_batches < 1:
    raise ValueError(f"calib_batches must be >= 1, got {calib_batches}")
  imgs, labels, mask = [], [], []
  for i, b in enumerate(eval_it(data_cfg, split, eval_batch_size)):
    if num_eval_batches and i >= num_eval_batches:
      break
    imgs.append(b["image"]), labels.append(b[key]), mask.append(b["mask"])
  it = train_it(data_cfg, calib_batch_size, seed=seed)
  calib = [next(it)["image"] for _ in range(calib_batches)]
  return EvalData(np.stack(calib), np.stack(imgs), np.stack(labels), np.stack(mask), key)


def _recalibrated(model, variables, masks, calib):
  """variables with the candidate's exact BatchNorm statistics over the `calib` batches
  (n_calib, Bc, H, W, C): `evonas_jax.evaluate.bn`, traced (one scan in the compiled program).
  Train mode without stochastic depth: the search model is built with drop_path_rate 0."""
  from evonas_jax.evaluate import exact_batch_stats_scan

  def forward(bs, im):
    _, upd = model.apply({**variables, "batch_stats": bs}, im, masks, train=True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return upd["batch_stats"]

  return {**variables,
          "batch_stats": exact_batch_stats_scan(forward, variables["batch_stats"], calib)}


def candidate_correct(model, space: SearchSpace, variables, genome, calib, images, labels, mask):
  """(correct, total) of one candidate on all eval batches, after BN recalibration.

  genome: i32 (G,); calib (n_calib, Bc, H, W, C); images (n_eval, B, H, W, C); labels/mask
  (n_eval, B). Pure and vmappable over `genome`. lax.scan keeps one copy of the network per loop
  in the compiled program, whatever the number of batches.
  """
  masks = genome_to_masks(space, genome)
  v = _recalibrated(model, variables, masks, calib)

  def eval_step(carry, batch):
    im, lab, mk = batch
    logits = model.apply(v, im, masks)
    return carry + jnp.sum((jnp.argmax(logits, -1) == lab) * mk), None

  correct, _ = jax.lax.scan(eval_step, jnp.zeros((), jnp.float32), (images, labels, mask))
  return correct, jnp.sum(mask)


def candidate_stats(model, space: SearchSpace, task, target_key: str, variables, genome, calib,
                    images, targets, mask):
  """The task's metric sums (`tasks.eval_stats`) of one candidate on all eval batches, after BN
  recalibration: the generalisation of `candidate_correct` to any task (depth, segmentation).
  Pure and vmappable over `genome`."""
  masks = genome_to_masks(space, genome)
  v = _recalibrated(model, variables, masks, calib)

  def stats_of(im, tg, mk):
    # task.eval_output: the plain forward, or the depth task's flip TTA (two passes).
    out = task.eval_output(lambda x: model.apply(v, x, masks), im)
    return task.eval_stats(out, {"image": im, target_key: tg, "mask": mk})

  zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                      jax.eval_shape(stats_of, images[0], targets[0], mask[0]))

  def eval_step(carry, batch):
    return jax.tree.map(jnp.add, carry, stats_of(*batch)), None

  stats, _ = jax.lax.scan(eval_step, zero, (images, targets, mask))
  return stats


def _candidate_fn(model, space, task, target_key):
  """Classification keeps its (correct, total) kernel; other tasks return metric sums."""
  if task is None:
    return functools.partial(candidate_correct, model, space)
  return functools.partial(candidate_stats, model, space, task, target_key)


@functools.lru_cache(maxsize=64)
def _group_fn(model, space: SearchSpace, mesh, task=None, target_key="label"):
  """The compiled group evaluation for one sub-mesh (memoised: linen modules, spaces and meshes
  hash by value, so evaluators rebuilt in one process, e.g. a resumed search, reuse compiles).

  (variables, genomes (g, G) sharded over "candidate", calib, images, labels, mask)
    -> (correct (g,), total (g,)).
  """
  one = _candidate_fn(model, space, task, target_key)
  batched = jax.vmap(one, in_axes=(None, 0, None, None, None, None))
  spec_c = P(parallel_pool.CANDIDATE_AXIS)
  # check_vma=False: the scan carries start replicated (supernet BN stats, a zero count) and
  # become candidate-varying inside the body; the per-device program is what we want.
  fn = jax.shard_map(batched, mesh=mesh, in_specs=(P(), spec_c, P(), P(), P(), P()),
                     out_specs=spec_c if task is not None else (spec_c, spec_c), check_vma=False)
  return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _data_parallel_fn(model, space: SearchSpace, mesh, task=None, target_key="label"):
  rep = NamedSharding(mesh, P())
  return jax.jit(_candidate_fn(model, space, task, target_key),
                 out_shardings=rep if task is not None else (rep, rep))


def _scores(task, metric, out) -> np.ndarray:
  """Per-candidate score from a compiled call's output: accuracy (classification) or the task's
  main metric (`task.finalize(stats)[metric]`) of each candidate's stats (leading axis)."""
  if task is None:
    correct, total = out
    return np.asarray(correct) / np.maximum(np.asarray(total), 1.0)
  out = jax.device_get(out)
  n = len(jax.tree.leaves(out)[0])
  return np.array([task.finalize(jax.tree.map(lambda a: a[i], out))[metric] for i in range(n)])


def _pool_map(items: list, num_workers: int, run: Callable, done: Callable[[int], None] | None):
  """[run(worker, item) for item in items], in order, on min(num_workers, len(items)) threads
  that pull items from a shared queue (dynamic load balancing: a worker that finishes early takes
  the next item). done(number finished) after each item. The first error stops the workers and
  is re-raised in the caller's thread."""
  tasks: queue.Queue = queue.Queue()
  for i, item in enumerate(items):
    tasks.put((i, item))
  results: dict = {}
  errors: list[BaseException] = []
  lock = threading.Lock()

  def worker(m):
    while not errors:
      try:
        i, item = tasks.get_nowait()
      except queue.Empty:
        return
      try:
        r = run(m, item)
      except BaseException as e:   # re-raised in the caller's thread
        errors.append(e)
        return
      with lock:
        results[i] = r
        if done is not None:
          done(len(results))

  threads = [threading.Thread(target=worker, args=(m,), daemon=True)
             for m in range(min(num_workers, len(items)))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]
  return [results[i] for i in range(len(items))]


class _CachedEvaluator:
  """Shared front end: validation, dedup against `cache` and within the call, stats."""
  kind = ""

  def __init__(self, space: SearchSpace, cache: dict | None = None, task=None, metric=None):
    self.space = space
    # task None: classification accuracy; else a tasks object and the finalize() key scored.
    self.task, self.metric = task, metric
    self.cache: dict[bytes, float] = {} if cache is None else cache
    self.stats = {"requested": 0, "cache_hits": 0, "evaluated": 0, "eval_seconds": 0.0}

  @staticmethod
  def key(genome) -> bytes:
    return np.asarray(genome, np.int32).tobytes()

  def evaluate(self, genomes, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """genomes int (N, G) -> accuracy f64 (N,), in the order given.

    progress: optional callback(num_candidates_done) for progress bars.
    """
    genomes = np.asarray(genomes)
    if genomes.ndim != 2 or genomes.shape[1] != self.space.genome_length:
      raise ValueError(f"genomes must be (N, {self.space.genome_length}), got {genomes.shape}")
    genomes = np.stack([self.space.validate(g) for g in genomes]) if len(genomes) else genomes
    keys = [self.key(g) for g in genomes]
    todo, seen = [], set()
    for k, g in zip(keys, genomes):
      if k not in self.cache and k not in seen:
        seen.add(k)
        todo.append(g)
    self.stats["requested"] += len(keys)
    self.stats["cache_hits"] += len(keys) - len(todo)
    if todo:
      t = time.perf_counter()
      acc = self._evaluate_unique(np.stack(todo).astype(np.int32), progress)
      self.stats["eval_seconds"] += time.perf_counter() - t
      self.stats["evaluated"] += len(todo)
      for g, a in zip(todo, acc):
        self.cache[self.key(g)] = float(a)
    return np.array([self.cache[k] for k in keys], np.float64)

  def _evaluate_unique(self, genomes: np.ndarray, progress) -> np.ndarray:
    raise NotImplementedError

  def warmup(self) -> float:
    """Compiles everything (without touching the cache); returns the seconds it took."""
    raise NotImplementedError


class DMMPEEvaluator(_CachedEvaluator):
  """Groups of candidates, vmapped, on disjoint ("candidate",) sub-meshes, asynchronously."""
  kind = "dmmpe"

  def __init__(self, model, variables, space, data: EvalData, *, devices=None,
               devices_per_group: int = 1, group_size: int = 4, cache=None, task=None,
               metric=None, layout: str = "pool"):
    super().__init__(space, cache, task, metric)
    if layout not in DMMPE_LAYOUTS:
      raise ValueError(f"DMMPE layout={layout!r} is not one of {DMMPE_LAYOUTS}")
    submeshes = parallel_pool.candidate_submeshes(devices, devices_per_group)
    if not isinstance(group_size, (int, np.integer)) or group_size < 1 or group_size % devices_per_group:
      raise ValueError(f"group_size={group_size!r} must be a positive multiple of "
                       f"devices_per_group={devices_per_group} (each device of a sub-mesh takes "
                       f"group_size / devices_per_group candidates)")
    self.layout = layout
    if layout == "pool":
      # One mesh of every device; as many candidates per call as all sub-meshes hold at once.
      self.meshes = [parallel_pool.candidate_submeshes(devices, len(submeshes) *
                                                       devices_per_group)[0]]
      self.group_size = int(group_size) * len(submeshes)
    else:
      self.meshes = submeshes
      self.group_size = int(group_size)
    self.devices_per_group = devices_per_group
    self._fns, self._args = [], []
    for mesh in self.meshes:
      self._fns.append(_group_fn(model, space, mesh, task, data.target_key))
      # Data and weights go to each sub-mesh once, for every group and generation.
      self._args.append(parallel_pool.replicate(
          (variables, data.calib, data.images, data.labels, data.mask), mesh))

  def _run_group(self, m: int, genomes: np.ndarray) -> np.ndarray:
    mesh = self.meshes[m]
    g = jax.device_put(genomes, NamedSharding(mesh, P(parallel_pool.CANDIDATE_AXIS)))
    variables, calib, images, labels, mask = self._args[m]
    return _scores(self.task, self.metric, self._fns[m](variables, g, calib, images, labels, mask))

  def _groups(self, genomes: np.ndarray) -> list[np.ndarray]:
    out = []
    for i in range(0, len(genomes), self.group_size):
      grp = genomes[i:i + self.group_size]
      if len(grp) < self.group_size:   # pad with copies of the last genome; results discarded
        grp = np.concatenate([grp, np.repeat(grp[-1:], self.group_size - len(grp), 0)])
      out.append(grp)
    return out

  def _evaluate_unique(self, genomes, progress) -> np.ndarray:
    groups = self._groups(genomes)
    done = None if progress is None else (
        lambda n: progress(min(n * self.group_size, len(genomes))))
    out = _pool_map(groups, len(self.meshes), self._run_group, done)
    return np.concatenate(out)[:len(genomes)]

  def warmup(self) -> float:
    t = time.perf_counter()
    g = np.repeat(self.space.encode(self.space.smallest())[None], self.group_size, 0)
    threads = [threading.Thread(target=self._run_group, args=(m, g)) for m in range(len(self.meshes))]
    for th in threads:
      th.start()
    for th in threads:
      th.join()
    return time.perf_counter() - t


class EngineEvaluatorPool(_CachedEvaluator):
  """Candidates one at a time on the compiled engine, one worker thread per sub-mesh.

  Same scores as `DMMPEEvaluator` (the same BatchNorm recalibration from the supernet's
  statistics over the `calib` batches, momentum 0.9, then the task's metric over the eval
  batches with padding masked out), computed by `engine.EngineEvaluator` at each candidate's
  own cost. Each sub-mesh of `devices_per_group` devices shards the batches over its devices.
  """
  kind = "engine"

  def __init__(self, model, variables, space, data: EvalData, *, devices=None,
               devices_per_group: int = 1, cache=None, task=None, metric=None):
    super().__init__(space, cache, task, metric)
    from evonas_jax.engine import EngineEvaluator
    from evonas_jax.tasks import Classification
    for name, b in (("eval_batch_size", data.images.shape[1]),
                    ("calib batch size", data.calib.shape[1])):
      if b % devices_per_group:
        raise ValueError(f"{name}={b} must be divisible by devices_per_group="
                         f"{devices_per_group} (each sub-mesh shards a batch over its devices)")
    # The DMMPE split of the pool, each sub-mesh re-labelled as a ("data",) mesh.
    self.meshes = [parallel_pool.data_mesh(list(m.devices.flat))
                   for m in parallel_pool.candidate_submeshes(devices, devices_per_group)]
    self._task = task if task is not None else Classification()
    self._metric = metric if metric is not None else "accuracy"
    self._workers = []
    for mesh in self.meshes:
      rep = NamedSharding(mesh, P())
      shard = NamedSharding(mesh, P(parallel_pool.DATA_AXIS))
      batches = [{"image": jax.device_put(data.images[i], shard),
                  data.target_key: jax.device_put(data.labels[i], shard),
                  "mask": jax.device_put(data.mask[i], shard)}
                 for i in range(data.images.shape[0])]
      calib = [jax.device_put(c, shard) for c in data.calib]
      # One EngineEvaluator (its own program tables) per worker thread: no shared mutable
      # state between threads.
      self._workers.append((EngineEvaluator(model, space, self._task),
                            jax.device_put(variables, rep), batches, calib))

  def _run_one(self, m: int, genome: np.ndarray) -> float:
    ev, variables, batches, calib = self._workers[m]
    r = ev.evaluate(variables, batches, self.space.decode(genome), calib_batches=calib)
    return float(r[self._metric])

  def _evaluate_unique(self, genomes, progress) -> np.ndarray:
    return np.array(_pool_map(list(genomes), len(self.meshes), self._run_one, progress))

  def warmup(self) -> float:
    """Builds the programs of the largest and smallest candidates on every sub-mesh (others
    compile on first use: one program per new width signature)."""
    t = time.perf_counter()
    for arch in (self.space.largest(), self.space.smallest()):
      g = self.space.encode(arch)
      threads = [threading.Thread(target=self._run_one, args=(m, g))
                 for m in range(len(self.meshes))]
      for th in threads:
        th.start()
      for th in threads:
        th.join()
    return time.perf_counter() - t


class DataParallelEvaluator(_CachedEvaluator):
  """Baseline: one candidate at a time, every batch sharded over a ("data",) mesh."""
  kind = "data_parallel"

  def __init__(self, model, variables, space, data: EvalData, *, devices=None, cache=None,
               task=None, metric=None):
    super().__init__(space, cache, task, metric)
    self.mesh = parallel_pool.data_mesh(devices)
    n = self.mesh.size
    for name, b in (("eval_batch_size", data.images.shape[1]), ("calib batch size", data.calib.shape[1])):
      if b % n:
        raise ValueError(f"{name}={b} must be divisible by the {n} devices of the data mesh")
    rep = NamedSharding(self.mesh, P())
    batch = NamedSharding(self.mesh, P(None, parallel_pool.DATA_AXIS))
    self._variables = jax.device_put(variables, rep)
    self._data = (jax.device_put(data.calib, batch), jax.device_put(data.images, batch),
                  jax.device_put(data.labels, batch), jax.device_put(data.mask, batch))
    self._rep = rep
    self._fn = _data_parallel_fn(model, space, self.mesh, task, data.target_key)

  def _evaluate_unique(self, genomes, progress) -> np.ndarray:
    out = []
    for i, g in enumerate(genomes):
      out.append(float(_scores(self.task, self.metric,
                               jax.tree.map(lambda a: a[None], self._fn(
                                   self._variables, jax.device_put(g, self._rep), *self._data)))[0]))
      if progress is not None:
        progress(i + 1)
    return np.array(out)

  def warmup(self) -> float:
    t = time.perf_counter()
    g = self.space.encode(self.space.smallest())
    jax.block_until_ready(self._fn(self._variables, jax.device_put(g, self._rep), *self._data))
    return time.perf_counter() - t


def make_evaluator(kind: str, model, variables, space: SearchSpace, data_cfg=None, *,
                   data: EvalData | None = None, split: str = "validation",
                   num_eval_batches: int | None = 10, eval_batch_size: int = 500,
                   calib_batches: int = 4, calib_batch_size: int = 128, calib_seed: int = 0,
                   devices: Sequence | None = None, devices_per_group: int = 1,
                   group_size: int = 4, cache: dict | None = None, rt=None,
                   layout: str = "pool"):
  """Builds an evaluator with `.evaluate(genomes (N, G)) -> score (N,)` and `.cache`.

  The score is the validation accuracy (classification), or with `rt` (a dense
  `task_runtime.TaskRuntime`) the task's main metric: AbsRel (depth, lower is better) or mIoU.

  kind: "dmmpe", "data_parallel" or "engine" (EngineEvaluatorPool). data: pre-loaded EvalData (else read from `data_cfg`, `split`
  ("validation" by default; "test" is refused), `num_eval_batches` x `eval_batch_size`, and
  `calib_batches` x `calib_batch_size` augmented train batches seeded by `calib_seed`).
  devices: device list (default all). devices_per_group: DMMPE and engine; group_size and
  layout ("pool" or "submeshes", see the module docstring): DMMPE.
  cache: an existing {genome bytes: accuracy} dict to continue (e.g. restored by the search).
  """
  if kind not in EVALUATORS:
    raise ValueError(f"evaluator kind={kind!r} is not one of {EVALUATORS}")
  if data is None:
    if data_cfg is None:
      raise ValueError("make_evaluator needs data_cfg or data")
    data = load_eval_data(data_cfg, split=split, num_eval_batches=num_eval_batches,
                          eval_batch_size=eval_batch_size, calib_batches=calib_batches,
                          calib_batch_size=calib_batch_size, seed=calib_seed,
                          rt=rt if rt is not None and rt.dense else None)
  task, metric = (rt.task, rt.metric) if rt is not None and rt.dense else (None, None)
  if kind == "dmmpe":
    return DMMPEEvaluator(model, variables, space, data, devices=devices,
                          devices_per_group=devices_per_group, group_size=group_size, cache=cache,
                          task=task, metric=metric, layout=layout)
  if kind == "engine":
    return EngineEvaluatorPool(model, variables, space, data, devices=devices,
                               devices_per_group=devices_per_group, cache=cache, task=task,
                               metric=metric)
  return DataParallelEvaluator(model, variables, space, data, devices=devices, cache=cache,
                               task=task, metric=metric)
