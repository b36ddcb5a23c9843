"""Device pools for evaluation: the `data` mesh and disjoint `candidate` sub-meshes (DMMPE).

DESIGN.md invariant 4: one naming scheme for every mesh. Training and the data-parallel
evaluation baseline use a ("data",) mesh over all devices; DMMPE splits the same device list into
disjoint sub-meshes with a ("candidate",) axis. Meshes are built with `jax.sharding.Mesh`, whose
axes are Auto (jax 0.10's `jax.make_mesh` defaults to Explicit axes, which reject unsharded inputs;
research/jaxstack.md §3).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
CANDIDATE_AXIS = "candidate"


def resolve_devices(devices: Sequence | None = None) -> list:
  """`devices` as a list (default: every device of the default backend)."""
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("devices: got an empty device list")
  return devs


def data_mesh(devices: Sequence | None = None) -> Mesh:
  """A 1-D ("data",) mesh over `devices` (default: all)."""
  return Mesh(np.array(resolve_devices(devices)), (DATA_AXIS,))


def candidate_submeshes(devices: Sequence | None = None, devices_per_group: int = 1) -> list[Mesh]:
  """Splits `devices` into len(devices) // devices_per_group disjoint ("candidate",) meshes.

  Sub-mesh k holds devices[k * devices_per_group : (k + 1) * devices_per_group], so neighbouring
  device ids (on GPUs: usually the same NVLink island) stay together.
  """
  devs = resolve_devices(devices)
  if not isinstance(devices_per_group, (int, np.integer)) or devices_per_group < 1:
    raise ValueError(f"devices_per_group must be a positive int, got {devices_per_group!r}")
  if len(devs) % devices_per_group:
    raise ValueError(f"devices_per_group={devices_per_group} does not divide the {len(devs)} "
                     f"devices; allowed values: "
                     f"{[d for d in range(1, len(devs) + 1) if len(devs) % d == 0]}")
  return [Mesh(np.array(devs[i:i + devices_per_group]), (CANDIDATE_AXIS,))
          for i in range(0, len(devs), devices_per_group)]


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` on all devices of `mesh` (fully replicated)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))
