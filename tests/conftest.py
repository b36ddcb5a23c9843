"""Test setup: CPU only, 8 fake devices (set before jax is imported anywhere)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The persistent compilation cache: off for a bare `pytest` unless EVONAS_JAX_COMPILE_CACHE
# names a folder; `make test` points it at ~/.cache/evonas_jax/xla-tests, so a second run loads
# the executables the first compiled. A cache entry is keyed by the HLO and every compile
# option, so a loaded executable is the one XLA would compile: results cannot depend on it
# (test_compile_cache.py tests the cache itself, in folders of its own).
os.environ.setdefault("EVONAS_JAX_COMPILE_CACHE", "none")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

# Compile time dominates the suite on 2 cores; numerics stay fp32 and tolerances unchanged.
jax.config.update("jax_disable_most_optimizations", True)

from evonas_jax import compile_cache  # noqa: E402

# Executables that compile in under 0.2 s are not written: thousands of tiny entries cost more
# to write on a cold run than they save on a warm one.
compile_cache.enable(os.environ["EVONAS_JAX_COMPILE_CACHE"], min_compile_seconds=0.2)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module, so a pytest-xdist worker that runs
  many modules does not keep every program (and its memory) for the whole suite. Why: twice this
  session a long-lived worker died with a bare "Fatal Python error: Aborted" inside an XLA
  compile (different tests each time), after which xdist hung; its surviving peer held 26,124
  memory mappings, so exhausting vm.max_map_count (65,530) is the suspected cause (not proven;
  .ci/run also raises that limit where it may). Set up first, so torn down last."""
  yield
  jax.clear_caches()
  gc.collect()
