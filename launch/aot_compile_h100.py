"""Compile the Pallas selective-scan kernels ahead of time for an H100, on a CPU box.

Needs the ``jax[cuda12]`` venv made by ``launch/aot_compile_h100.sh`` and
``JAX_PLATFORMS=cpu`` (research/jaxstack.md §2b): the CUDA PJRT plugin then
registers without a GPU and ``get_topology_desc`` gives a compile-only H100
device described by a ``GpuTargetConfigProto`` text file.  This runs the full
Triton -> PTX -> SASS pipeline, so it catches GPU compile errors that CPU
interpret-mode tests cannot; it does not check numerics.

Prints one line per kernel and shape:
``kernel  shape  dtype  compile_s  serialized_bytes  cubin``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = "../shared/gpu/h100_target_config.txtpb"  # relative to the repo root

# (label, batch, dim, length, state, groups)
SHAPES = [
    ("mamba_l1024", 8, 1536, 1024, 16, 1),
    ("mamba_l4096", 8, 1536, 4096, 16, 1),
    # VMamba SS2D at 56x56: 4 directions x 192 channels folded into dim,
    # one B/C group per direction.
    ("ss2d_56x56", 8, 4 * 192, 56 * 56, 16, 4),
]


def resolve_target(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def _public_op(b, d, l, n, g, dtype, sharding):
    """The public op's value_and_grad (both kernels plus the XLA glue around them)."""
    import jax
    import jax.numpy as jnp

    from evonas_jax.kernels import selective_scan

    def S(shape, dt=dtype):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding)

    bc = S((b, n, l) if g == 1 else (b, g, n, l))
    f32 = jnp.float32
    structs = [S((b, d, l)), S((b, d, l)), S((d, n), f32), bc, bc, S((d,), f32),
               S((b, d, l)), S((d,), f32)]

    def loss(*a):
        return selective_scan(*a, delta_softplus=True, backend="pallas").astype(f32).sum()

    return jax.value_and_grad(loss, argnums=tuple(range(8))), structs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-config", default=os.environ.get("H100_TARGET_CONFIG", DEFAULT_TARGET),
                    help="GpuTargetConfigProto text file; relative paths are resolved against "
                         f"the repo root (default {DEFAULT_TARGET}, env H100_TARGET_CONFIG)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--quick", action="store_true", help="only the smallest shape")
    args = ap.parse_args(argv)

    if os.environ.get("JAX_PLATFORMS") != "cpu":
        print("warning: JAX_PLATFORMS is not 'cpu'; the CUDA plugin may fail to init without a GPU",
              file=sys.stderr)
    target = resolve_target(args.target_config)
    if not target.is_file():
        print(f"error: target config {target} not found", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.experimental.serialize_executable import serialize

    from evonas_jax.kernels.scan_pallas import kernel_entry_points

    topo = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                        target_config=target.read_text())
    dev = topo.devices[0]
    sharding = jax.sharding.SingleDeviceSharding(dev)
    print(f"# jax {jax.__version__}; target {dev.device_kind} ({target.name}); "
          f"kernel shapes are (batch, dim, length, state, groups)")
    print(f"{'kernel':<20} {'label':<12} {'shape':<28} {'dtype':<9} {'compile_s':>9} "
          f"{'serialized_B':>12} cubin")
    failures = 0
    for label, b, d, l, n, g in SHAPES[:1] if args.quick else SHAPES:
        for dtype_name in args.dtypes.split(","):
            dtype = jnp.dtype(dtype_name)
            kernels = kernel_entry_points(b, d, l, n, groups=g, dtype=dtype, sharding=sharding)
            kernels["op_value_and_grad"] = _public_op(b, d, l, n, g, dtype, sharding)
            for name, (fn, structs) in kernels.items():
                t0 = time.perf_counter()
                try:
                    compiled = jax.jit(fn).trace(*structs).lower().compile()
                    payload, _, _ = serialize(compiled)
                except Exception as e:  # report and continue with the other kernels
                    failures += 1
                    print(f"{name:<20} {label:<12} {str((b, d, l, n, g)):<28} {dtype_name:<9} "
                          f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                dt = time.perf_counter() - t0
                # The executable embeds the cubin as an ELF image: proof that
                # ptxas produced SASS, not just that lowering succeeded.
                cubin = "yes" if b"\x7fELF" in payload else "no"
                print(f"{name:<20} {label:<12} {str((b, d, l, n, g)):<28} {dtype_name:<9} "
                      f"{dt:9.2f} {len(payload):12d} {cubin}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
