"""Meshes, multi-host start-up and data placement (DESIGN.md invariant 4: sharding is configuration).

One named mesh: the `data` axis for training. Everything here works the same for 1 device, N local
devices and N hosts (each host feeding its local slice of the global batch).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def varying_axes(x) -> frozenset:
  """Mesh axes over which a value traced inside shard_map varies (check_vma), else empty.

  jax 0.10 keeps them in `typeof(x).manual_axis_type.varying`; earlier releases in
  `typeof(x).vma`."""
  t = jax.typeof(x)
  mat = getattr(t, "manual_axis_type", None)
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(t, "vma", frozenset()))
DATA_SHARDING_MODES = ("per_host", "global_slice")


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
                           timeout_s: int = 300) -> bool:
  """Starts `jax.distributed` when this is a multi-process run; returns whether it did.

  Explicit arguments win (the local launcher passes them); otherwise SLURM / OpenMPI auto-detection
  (`jax.distributed.initialize()` with no arguments) is used when SLURM_JOB_ID or
  OMPI_COMM_WORLD_SIZE says we are one task of several. Must run before any other JAX call.
  """
  if coordinator or num_processes > 1:
    if not (coordinator and num_processes > 1 and 0 <= process_id < num_processes):
      raise ValueError(
          "multi-process run needs all of --coordinator (host:port), --num_processes (> 1) and "
          f"--process_id (0..num_processes-1); got {coordinator!r}, {num_processes}, {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
    _first_collective()
    return True
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  mpi_tasks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
  if slurm_tasks > 1 or mpi_tasks > 1:
    jax.distributed.initialize(initialization_timeout=timeout_s)
    _first_collective()
    return True
  return False


def _first_collective() -> None:
  """One cross-process barrier right after `jax.distributed.initialize`, while every process
  has just met at the coordinator. On CPU the gloo communicator is created at the first
  collective and waits only 30 s for its peers (a key-value lookup with a fixed deadline): when
  that first collective came later (orbax's barrier when the checkpoint manager opens, after
  the processes built and compiled the trainer at their own pace), a resumed 2-process run on a
  loaded machine aborted with "Gloo context initialization failed: GetKeyValue() timed out"
  (2 of the first 3 relaunches in benchmarks/fault_injection.py's multiprocess path)."""
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("evonas_jax:distributed_start")


def make_data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` global devices (0 = all).

  Built with `jax.sharding.Mesh` (Auto axis types), so shard_map accepts arrays placed with
  `NamedSharding(mesh, P("data"))` (jax 0.10's `make_mesh` defaults to Explicit axes).
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"parallel.num_devices={n} but only {len(devices)} devices are visible "
                     f"({devices[0].platform}); use 0 for all of them")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError("multi-host runs must use every device (parallel.num_devices=0)")
  return Mesh(np.array(devices[:n]), (DATA_AXIS,))


def local_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
  """The rows of the global batch that this process feeds (its devices' contiguous block)."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"batch_size={global_batch_size} must be divisible by the number of devices "
                     f"in the data mesh ({n})")
  per_dev = global_batch_size // n
  ids = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
  if ids != list(range(ids[0], ids[-1] + 1)):
    raise ValueError("this process's devices are not contiguous in the data mesh")
  return slice(ids[0] * per_dev, (ids[-1] + 1) * per_dev)


def local_rows(mesh: Mesh, global_batch_size: int) -> int:
  """Rows of a `global_batch_size` batch that live on this process."""
  sl = local_batch_slice(mesh, global_batch_size)
  return sl.stop - sl.start


def shard_batch(mesh: Mesh, local_arrays: dict) -> dict:
  """Host-local numpy rows -> global arrays sharded over `data` (one call for every host)."""
  sh = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
          for k, v in local_arrays.items()}


def replicate(mesh: Mesh, tree):
  """Places a pytree (identical on every host) replicated on every device of `mesh`."""
  sh = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), tree)


def to_host(tree):
  """Fully replicated global arrays -> numpy on every host."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else x, tree)
