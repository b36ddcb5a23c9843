"""Where a result came from: package versions, the git commit, the devices.

    provenance() -> {"packages": {name: version | None}, "python": "3.11.2",
                     "git": {"commit": "<40 hex>", "dirty": bool} | None,
                     "devices": {"platform", "kind", "count", "local_count", "process_count"}}

Written into every train `results.json`, search `pareto.json` / `results.json` and export
`arch.json`. The commit is that of the git checkout holding this package's source (None for an
installed wheel, a tarball, or when git is missing or refuses); it never raises.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess

PACKAGES = ("evonas_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "evosax", "numpy")


def package_versions(names=PACKAGES) -> dict:
  """Installed distribution versions (None when a distribution is not installed)."""
  from importlib import metadata
  out = {}
  for n in names:
    try:
      out[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
      out[n] = None
  if "evonas_jax" in out and out["evonas_jax"] is None:   # run from a source tree, not installed
    from evonas_jax import __version__
    out["evonas_jax"] = __version__
  return out


def _git(args, cwd) -> str | None:
  try:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return r.stdout.strip() if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_info() -> dict | None:
  """{"commit", "dirty"} of the checkout this package's source lives in, else None.

  Only when this package's own __init__.py is tracked by that checkout: an installed package
  inside some unrelated repository (a venv in a project folder) must not report that
  repository's commit. dirty: tracked files differ from the commit (untracked files ignored).
  """
  src = os.path.dirname(os.path.abspath(__file__))
  top = _git(["rev-parse", "--show-toplevel"], src)
  if not top:
    return None
  init = os.path.relpath(os.path.join(src, "__init__.py"), top)
  if _git(["ls-files", "--error-unmatch", init], top) is None:
    return None
  commit = _git(["rev-parse", "HEAD"], top)
  if not commit:
    return None
  status = _git(["status", "--porcelain", "--untracked-files=no"], top)
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info() -> dict:
  """Platform, device kind and counts of the JAX backend in use."""
  import jax
  devs = jax.devices()
  return {"platform": devs[0].platform, "kind": devs[0].device_kind, "count": len(devs),
          "local_count": jax.local_device_count(), "process_count": jax.process_count()}


def provenance() -> dict:
  """Versions, git commit and devices (see the module docstring); JSON-serialisable."""
  return {"packages": package_versions(), "python": platform.python_version(),
          "git": git_info(), "devices": device_info()}
