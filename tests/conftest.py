"""Test setup: CPU only, 8 fake devices (set before jax is imported anywhere)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No persistent compilation cache in tests unless a test sets one: results must not depend on
# what an earlier run left in ~/.cache (test_compile_cache.py tests the cache itself).
os.environ.setdefault("EVONAS_JAX_COMPILE_CACHE", "none")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

# Compile time dominates the suite on 2 cores; numerics stay fp32 and tolerances unchanged.
jax.config.update("jax_disable_most_optimizations", True)
