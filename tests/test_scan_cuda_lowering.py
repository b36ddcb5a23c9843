"""Lower the Pallas selective-scan kernels for CUDA on a CPU-only machine.

Lowering runs the Pallas -> Triton IR translation, so this catches Triton
constraint violations (power-of-two sizes, unsupported ops, scratch memory)
without a GPU.  It checks neither numerics nor ptxas; the opt-in AOT test at
the bottom goes through the full H100 compile when ``.venv-cuda`` exists.
"""
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from evonas_jax.kernels import selective_scan
from evonas_jax.kernels.scan_pallas import kernel_entry_points

TRITON_CALL = "__gpu$xla.gpu.triton"
F32 = jnp.float32
S = jax.ShapeDtypeStruct


def _structs(b, d, l, n, groups, dtype, optional=True):
    bc = S((b, n, l) if groups is None else (b, groups, n, l), dtype)
    opt = (S((d,), F32), S((b, d, l), dtype), S((d,), F32)) if optional else (None, None, None)
    return (S((b, d, l), dtype), S((b, d, l), dtype), S((d, n), F32), bc, bc) + opt


def _lower(fn, *structs):
    return jax.jit(fn).trace(*structs).lower(lowering_platforms=("cuda",)).as_text()


SHAPES = [
    # (b, d, l, n, groups, dtype, with D/z/delta_bias)
    (2, 64, 128, 16, None, F32, True),
    (1, 5, 13, 3, None, F32, True),        # non-power-of-two channels/state, odd length
    (2, 24, 1, 4, 4, jnp.bfloat16, True),  # length 1, grouped, bf16
    (1, 8, 33, 16, 2, F32, False),         # no optional inputs
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(s[:5]))
def test_forward_and_backward_lower_to_triton(shape):
    b, d, l, n, groups, dtype, optional = shape
    structs = _structs(b, d, l, n, groups, dtype, optional)

    def fwd(*a):
        return selective_scan(*a, delta_softplus=True, return_last_state=True, backend="pallas")

    txt = _lower(fwd, *structs)
    assert txt.count(TRITON_CALL) == 1 and 'name = "selective_scan_fwd"' in txt
    assert "mosaic_gpu" not in txt  # Triton explicitly, not the Mosaic GPU default

    diff = [i for i, s in enumerate(structs) if s is not None]

    def loss(*a):
        y, last = fwd(*a)
        return y.astype(F32).sum() + last.sum()

    txt = _lower(jax.grad(loss, argnums=tuple(diff)), *structs)
    assert txt.count(TRITON_CALL) == 2
    assert 'name = "selective_scan_fwd"' in txt and 'name = "selective_scan_bwd"' in txt


def test_bare_kernels_lower_at_mamba_size():
    for name, (fn, structs) in kernel_entry_points(8, 1536, 4096, 16).items():
        txt = _lower(fn, *structs)
        assert txt.count(TRITON_CALL) == 1 and f'name = "{name}"' in txt
        assert "num_warps = 4" in txt


REPO = Path(__file__).resolve().parent.parent
CUDA_PY = REPO / ".venv-cuda" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not CUDA_PY.exists(), reason="needs .venv-cuda (launch/aot_compile_h100.sh)")
def test_aot_compile_for_h100():
    target = (REPO / "../shared/gpu/h100_target_config.txtpb").resolve()
    if not target.exists() and "H100_TARGET_CONFIG" not in os.environ:
        pytest.skip("no H100 target config")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([str(CUDA_PY), str(REPO / "launch" / "aot_compile_h100.py"), "--quick",
                          "--dtypes", "float32"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("selective_scan_")]
    assert len(lines) == 2 and all(ln.endswith(" yes") for ln in lines), out.stdout
