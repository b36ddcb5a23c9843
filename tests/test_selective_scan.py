"""selective_scan: reference vs a naive loop, Pallas (interpret mode) vs reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.kernels import selective_scan

F32 = jnp.float32


def make_inputs(b=2, d=6, l=9, n=4, groups=None, D=True, z=True, delta_bias=True,
                dtype=F32, seed=0):
    """Random inputs with mamba-like ranges (A < 0, delta around softplus range)."""
    rng = np.random.default_rng(seed)
    bc_shape = (b, n, l) if groups is None else (b, groups, n, l)
    args = dict(
        u=rng.normal(size=(b, d, l)),
        delta=rng.uniform(-1.0, 0.5, size=(b, d, l)),
        A=-np.exp(rng.normal(size=(d, n)) * 0.5),
        B=rng.normal(size=bc_shape),
        C=rng.normal(size=bc_shape),
        D=rng.normal(size=(d,)) if D else None,
        z=rng.normal(size=(b, d, l)) if z else None,
        delta_bias=rng.uniform(-0.5, 0.5, size=(d,)) if delta_bias else None,
    )
    out = {}
    for k, v in args.items():
        if v is None:
            out[k] = None
        elif k in ("A", "D", "delta_bias"):  # parameters stay fp32, like mamba
            out[k] = jnp.asarray(v, F32)
        else:
            out[k] = jnp.asarray(v, dtype)
    return out


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Index-by-index float64 loop, written independently of scan_reference."""
    f = lambda x: None if x is None else np.asarray(jnp.asarray(x, F32), np.float64)
    u, delta, A, B, C, D, z, delta_bias = map(f, (u, delta, A, B, C, D, z, delta_bias))
    b, d, l = u.shape
    n = A.shape[1]
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    dpg = d // B.shape[1]
    y = np.zeros((b, d, l))
    last = np.zeros((b, d, n))
    for bi in range(b):
        for c in range(d):
            grp = c // dpg
            h = np.zeros(n)
            for t in range(l):
                dt = delta[bi, c, t] + (0.0 if delta_bias is None else delta_bias[c])
                if delta_softplus:
                    dt = np.log1p(np.exp(dt))
                h = np.exp(dt * A[c]) * h + dt * B[bi, grp, :, t] * u[bi, c, t]
                out = float(h @ C[bi, grp, :, t])
                if D is not None:
                    out += D[c] * u[bi, c, t]
                if z is not None:
                    zz = z[bi, c, t]
                    out *= zz / (1.0 + np.exp(-zz))
                y[bi, c, t] = out
            last[bi, c] = h
    return y, last


CASES = {
    "plain": dict(b=2, d=6, l=9, n=4, D=False, z=False, delta_bias=False),
    "full_softplus": dict(b=2, d=6, l=9, n=4, softplus=True),
    "len1": dict(b=1, d=3, l=1, n=2, softplus=True),
    "odd_len_np2_dim": dict(b=1, d=5, l=13, n=3, softplus=True),
    "grouped": dict(b=2, d=8, l=7, n=4, groups=4, softplus=True),
    "grouped_one": dict(b=1, d=4, l=6, n=4, groups=1, D=False, z=False),
}


def _split(case):
    case = dict(case)
    softplus = case.pop("softplus", False)
    return make_inputs(**case), softplus


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_naive_loop(name):
    x, sp = _split(CASES[name])
    y, last = selective_scan(**x, delta_softplus=sp, return_last_state=True, backend="reference")
    y_ref, last_ref = naive_scan(**x, delta_softplus=sp)
    assert y.shape == x["u"].shape and y.dtype == F32
    assert last.shape == (x["u"].shape[0], x["u"].shape[1], x["A"].shape[1]) and last.dtype == F32
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=1e-5)


def test_reference_bf16_inputs():
    # bf16 inputs are upcast exactly and the state is fp32, so the only error
    # beyond fp32 round-off is the final rounding of y to bf16: at most half
    # a bf16 ulp = 2**-9 relative.  rtol 2**-7 leaves margin for fp32 noise
    # near rounding boundaries; atol covers outputs near zero.
    x = make_inputs(b=2, d=4, l=11, n=4, dtype=jnp.bfloat16)
    y, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    assert y.dtype == jnp.bfloat16 and last.dtype == F32
    y_ref, last_ref = naive_scan(**x, delta_softplus=True)
    scale = np.abs(y_ref).max()
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=2**-7, atol=2**-8 * scale)
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=1e-5)


def test_auto_backend_on_cpu_is_reference():
    x = make_inputs()
    np.testing.assert_array_equal(selective_scan(**x), selective_scan(**x, backend="reference"))


def test_return_last_state_false_returns_array():
    x = make_inputs()
    y = selective_scan(**x, backend="reference")
    assert isinstance(y, jax.Array) and y.shape == x["u"].shape


def test_jit_and_grad_reference():
    x = make_inputs()
    f = jax.jit(lambda u, dl: selective_scan(u, dl, x["A"], x["B"], x["C"], x["D"], x["z"],
                                             x["delta_bias"], True).sum())
    g = jax.grad(f, argnums=(0, 1))(x["u"], x["delta"])
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in g)


@pytest.mark.parametrize("bad, match", [
    (dict(backend="cuda"), "allowed values are 'auto', 'reference', 'pallas', 'pallas_interpret'"),
    (dict(u=jnp.zeros((2, 6))), "u must be"),
    (dict(delta=jnp.zeros((2, 6, 8))), "delta must have"),
    (dict(A=jnp.zeros((5, 4))), "A must be"),
    (dict(B=jnp.zeros((2, 4, 9)), C=jnp.zeros((2, 3, 9))), "same shape"),
    (dict(B=jnp.zeros((2, 5, 9)), C=jnp.zeros((2, 5, 9))), "does not match"),
    (dict(B=jnp.zeros((2, 4, 4, 9)), C=jnp.zeros((2, 4, 4, 9))), "not divisible"),
    (dict(D=jnp.zeros((5,))), "D must be"),
    (dict(delta_bias=jnp.zeros((6, 1))), "delta_bias must be"),
    (dict(z=jnp.zeros((2, 6, 8))), "z must have"),
])
def test_invalid_inputs_raise_clear_errors(bad, match):
    x = make_inputs()
    x.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan(**x)


def test_integer_input_rejected():
    x = make_inputs()
    x["u"] = jnp.zeros(x["u"].shape, jnp.int32)
    with pytest.raises(TypeError, match="floating"):
        selective_scan(**x)


# ------------------------------------------------ Pallas (interpret mode) --
from evonas_jax.kernels.scan_pallas import selective_scan_pallas  # noqa: E402

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _assert_rel(actual, expected, rtol=1e-4, name=""):
    """Elementwise rtol, with an absolute floor of rtol * 1e-2 * max|expected|
    so that entries that are ~0 by cancellation do not dominate."""
    expected = np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * 1e-2 * scale, err_msg=name)


@pytest.mark.parametrize("name", list(CASES))
def test_pallas_forward_matches_reference(name):
    x, sp = _split(CASES[name])
    y, last = selective_scan(**x, delta_softplus=sp, return_last_state=True,
                             backend="pallas_interpret")
    y_ref, last_ref = selective_scan(**x, delta_softplus=sp, return_last_state=True,
                                     backend="reference")
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and last.shape == last_ref.shape
    _assert_rel(y, y_ref, 1e-5)
    _assert_rel(last, last_ref, 1e-5)


def _loss(scan):
    """Scalar touching y (non-uniform weights) and the last state."""
    def f(*args):
        y, last = scan(*args)
        w = jnp.cos(jnp.arange(y.size, dtype=F32)).reshape(y.shape)
        return jnp.sum(y.astype(F32) * w) + jnp.sum(last ** 2)
    return f


def _check_grads(x, sp, pallas_scan):
    names = [k for k in ARG_NAMES if x[k] is not None]
    args = [x[k] for k in names]

    def wrap(scan):
        def call(*a):
            kw = dict(zip(names, a))
            return scan(kw)
        return call

    ref = wrap(lambda kw: selective_scan(**kw, delta_softplus=sp, return_last_state=True,
                                         backend="reference"))
    argnums = tuple(range(len(args)))
    g_ref = jax.grad(_loss(ref), argnums=argnums)(*args)
    g_pal = jax.grad(_loss(wrap(pallas_scan)), argnums=argnums)(*args)
    for name, gp, gr in zip(names, g_pal, g_ref):
        assert gp.shape == gr.shape and gp.dtype == gr.dtype, name
        _assert_rel(gp, gr, 1e-4, name)


@pytest.mark.parametrize("name", ["plain", "full_softplus", "len1", "odd_len_np2_dim", "grouped"])
def test_pallas_grads_match_reference(name):
    x, sp = _split(CASES[name])
    _check_grads(x, sp, lambda kw: selective_scan(**kw, delta_softplus=sp, return_last_state=True,
                                                  backend="pallas_interpret"))


def test_pallas_multi_chunk_multi_block_grads():
    # chunk=4 on l=11: two full checkpointed chunks plus a ragged tail of 3;
    # block_d=2 with 3 channels per group: channel padding inside each group.
    x = make_inputs(b=2, d=6, l=11, n=3, groups=2, seed=3)

    def scan(kw):
        bc = {k: kw[k] for k in ARG_NAMES}
        return selective_scan_pallas(**bc, delta_softplus=True, interpret=True,
                                     block_d=2, chunk=4)

    y, last = scan(x)
    y_ref, last_ref = selective_scan(**x, delta_softplus=True, return_last_state=True,
                                     backend="reference")
    _assert_rel(y, y_ref, 1e-5)
    _assert_rel(last, last_ref, 1e-5)
    _check_grads(x, True, scan)


def test_pallas_bf16_matches_reference():
    # Both paths upcast the same bf16 values and keep fp32 state, so before
    # the final cast they agree to fp32 round-off; the cast to bf16 can then
    # differ by one bf16 ulp (2**-8 relative) where a value sits on a rounding
    # boundary.  Hence rtol 2**-7 plus a small absolute floor.
    x = make_inputs(b=2, d=8, l=10, n=4, groups=2, dtype=jnp.bfloat16)
    y, last = selective_scan(**x, delta_softplus=True, return_last_state=True,
                             backend="pallas_interpret")
    y_ref, last_ref = selective_scan(**x, delta_softplus=True, return_last_state=True,
                                     backend="reference")
    assert y.dtype == jnp.bfloat16 and last.dtype == F32
    scale = float(jnp.abs(y_ref.astype(F32)).max())
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                               rtol=2**-7, atol=2**-8 * scale)
    _assert_rel(last, last_ref, 1e-5)
    # gradients come back in the inputs' dtypes
    g = jax.grad(lambda u: selective_scan(u, *[x[k] for k in ARG_NAMES[1:]], delta_softplus=True,
                                          backend="pallas_interpret").astype(F32).sum())(x["u"])
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(F32))))


def test_pallas_under_jit():
    x = make_inputs()
    f = jax.jit(lambda kw: selective_scan(**kw, backend="pallas_interpret"))
    _assert_rel(f(x), selective_scan(**x, backend="reference"), 1e-5)
