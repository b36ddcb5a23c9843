"""Orbax checkpoints of the training state (DESIGN.md invariant 5: everything resumable).

A checkpoint holds `state` (params, batch_stats, opt_state: a pytree restored onto the current
mesh) and `meta` (JSON: step, PST stage, rng seed, data iterator state, anything else small).
Saves are asynchronous; `keep` checkpoints are kept. Restoring tries the newest step first and
falls back to the previous one with a clear message when it is unreadable (a run killed while
writing, a truncated file), so a corrupt latest checkpoint never blocks resuming.
"""
from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class TrainCheckpointer:
  """CheckpointManager wrapper for (state pytree, meta dict) pairs under `directory`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.mngr = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> None:
    self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=force)

  def steps(self) -> list[int]:
    return sorted(self.mngr.all_steps())

  def restore_latest(self, abstract_state):
    """(state, meta, step) of the newest readable checkpoint, or None when there is none.

    abstract_state: a pytree of jax.ShapeDtypeStruct (with shardings) or arrays giving the
    structure, dtypes and target placement.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        r = self.mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        if step != steps[-1]:
          print(f"[evonas_jax] resumed from the previous checkpoint, step {step}", flush=True)
        return r["state"], r["meta"], step
      except Exception as e:   # noqa: BLE001 - any unreadable checkpoint: try the older one
        msg = (f"checkpoint at step {step} in {self.directory} is unreadable "
               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        if step == steps[0]:
          raise RuntimeError(msg + "; no older checkpoint to fall back to. Delete that directory "
                             "to start over, or point --workdir elsewhere.") from e
        print(f"[evonas_jax] WARNING: {msg}; falling back to the previous one.", flush=True)
    return None

  def wait(self) -> None:
    self.mngr.wait_until_finished()

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()


def abstract_like(tree):
  """ShapeDtypeStructs (keeping shardings) of a pytree of arrays: a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=getattr(x, "sharding", None)), tree)


def load_pytree(path: str, target=None):
  """One-off restore of a StandardCheckpointer save (e.g. `<workdir>/final`, a teacher).

  `path` may be a training workdir (its `final/` is used) or a checkpoint directory.
  With `target` (arrays or ShapeDtypeStructs) the structure and dtypes are checked against it.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "final")):
    path = os.path.join(path, "final")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  ckptr = ocp.StandardCheckpointer()
  if target is not None:
    _check_saved_leaves(ckptr, path, target)
  try:
    if target is None:
      return ckptr.restore(path)
    return ckptr.restore(path, abstract_like(target))
  except Exception as e:   # noqa: BLE001 - orbax / tensorstore errors name no file of ours
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise ValueError(f"checkpoint {path} is unreadable or does not fit the expected tree "
                     f"({type(e).__name__}: {first})") from e


def _check_saved_leaves(ckptr, path: str, target) -> None:
  """ValueError naming the leaf when a leaf of `target` is missing from the checkpoint at
  `path` or saved with another shape / dtype (orbax would cast the dtype silently)."""
  import numpy as np
  try:
    meta = ckptr.metadata(path)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
  except Exception:   # noqa: BLE001 - no readable metadata: the restore reports it
    return
  if not isinstance(tree, dict):
    return
  for kp, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    node, name = tree, []
    for k in kp:
      key = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
      name.append(str(key))
      node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        node = None
        break
    where = "/".join(name)
    if node is None:
      raise ValueError(f"checkpoint {path} has no leaf {where!r} (the restore target needs it)")
    shape, dtype = getattr(node, "shape", None), getattr(node, "dtype", None)
    if shape is not None and tuple(shape) != tuple(np.shape(leaf)):
      raise ValueError(f"checkpoint {path}: leaf {where!r} has shape {tuple(shape)}, the target "
                       f"{tuple(np.shape(leaf))}")
    want = getattr(leaf, "dtype", None)
    if dtype is not None and want is not None and np.dtype(dtype) != np.dtype(want):
      raise ValueError(f"checkpoint {path}: leaf {where!r} has dtype {np.dtype(dtype)}, the "
                       f"target {np.dtype(want)}")


def save_pytree(path: str, tree) -> None:
  """One-off save (StandardCheckpointer); refuses to overwrite an existing path."""
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; refusing to overwrite it")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), tree)
  ckptr.wait_until_finished()
