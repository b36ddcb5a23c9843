"""Pallas (Triton backend) selective-scan kernels, forward and backward.

Design (constraints from research/jaxstack.md §2/§2b, jax 0.10.2):

* Grid ``(batch, channel_blocks)``; each program owns ``bd`` channels of one
  batch row and walks the whole sequence with ``fori_loop``, carrying the
  ``(bd, n)`` float32 state in registers.  Blocks span the whole length; the
  loop reads/writes one timestep per iteration by ref indexing, so no op ever
  touches a whole-length array and the length needs no padding.
* Triton needs power-of-two array sizes, so channels-per-group and the state
  size are zero-padded (padded channels/states stay exactly zero in ``h`` and
  are cropped), and the Triton backend is chosen explicitly with
  ``pltriton.CompilerParams`` (the default would be Mosaic GPU, which cannot
  hold whole-length blocks in shared memory).
* Triton Pallas has no scratch memory and no autodiff.  The forward kernel
  saves the state at the start of every chunk of ``chunk`` steps; the backward
  kernel walks chunks in reverse, recomputes the chunk's states from its
  checkpoint into a per-program slice of a global "hbuf" output (a stand-in for
  scratch), then runs the reverse-time adjoint recurrence over the chunk.
  Memory: ``b*d*(l/chunk)*n`` checkpoints + ``b*d*chunk*n`` hbuf floats
  instead of ``b*d*l*n`` for storing every state.  ``pltriton.debug_barrier``
  (``__syncthreads``) separates writing hbuf from reading it, because the
  threads that read a state need not be the ones that wrote it.

Status: numerically checked in interpret mode and compiled to an H100 cubin
ahead of time (launch/aot_compile_h100.py), but not yet run or timed on a
GPU.  Known performance question for that run: the per-timestep ``(bd, 1)``
loads from the ``(b, d, l)`` layout are strided by ``l`` and rely on L1/L2
reuse over consecutive timesteps; loading ``(bd, chunk)`` tiles and picking
columns in registers is the alternative to measure.

Kernel-level layouts (``dp``: padded channels, ``np_``: padded state):

* ``u, delta, z, y``: ``(b, dp, l)``
* ``A``: ``(dp, np_)`` f32; ``D, delta_bias``: ``(dp, 1)`` f32
* ``B, C``: ``(b, g, l, np_)``: time-major per group so that one timestep is a
  contiguous ``(1, np_)`` row (B/C are ``d/g`` times smaller than ``u``, so the
  transpose is cheap).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

F32 = jnp.float32
DEFAULT_BLOCK_D = 32
DEFAULT_CHUNK = 64


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _softplus(x):
    # mamba's threshold: softplus(x) == x to fp32 precision for x > 20.
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


class _Cfg:
    """Static configuration shared by the forward and backward kernels."""

    def __init__(self, b, dp, l, np_, g, bd, chunk, has_d, has_z, has_bias, softplus, interpret):
        self.b, self.dp, self.l, self.np_, self.g, self.bd = b, dp, l, np_, g, bd
        self.chunk = chunk
        self.nck = -(-l // chunk)  # number of chunks (last may be partial)
        self.nblocks = dp // bd
        self.blocks_per_group = self.nblocks // g
        self.has_d, self.has_z, self.has_bias = has_d, has_z, has_bias
        self.softplus, self.interpret = softplus, interpret

    def key(self):
        return tuple(sorted(vars(self).items()))

    # Hashable by value: the config is a static (nondiff) custom_vjp argument.
    def __hash__(self):
        return hash(self.key())

    def __eq__(self, other):
        return isinstance(other, _Cfg) and self.key() == other.key()

    def pallas_kwargs(self, name):
        kw = dict(grid=(self.b, self.nblocks), interpret=self.interpret, name=name)
        if not self.interpret:
            kw["compiler_params"] = pltriton.CompilerParams(num_warps=4, num_stages=1)
        return kw

    # BlockSpecs ---------------------------------------------------------
    def seq_spec(self):      # (b, dp, l) -> (bd, l)
        return pl.BlockSpec((None, self.bd, self.l), lambda i, j: (i, j, 0))

    def bc_spec(self):       # (b, g, l, np) -> (l, np) of this block's group
        bpg = self.blocks_per_group
        return pl.BlockSpec((None, None, self.l, self.np_), lambda i, j: (i, j // bpg, 0, 0))

    def chan_spec(self, width):  # (dp, width) -> (bd, width)
        return pl.BlockSpec((self.bd, width), lambda i, j: (j, 0))

    def state_spec(self):    # (b, dp, np) -> (bd, np)
        return pl.BlockSpec((None, self.bd, self.np_), lambda i, j: (i, j, 0))

    def stack_spec(self, depth):  # (b, depth, dp, np) -> (depth, bd, np)
        return pl.BlockSpec((None, depth, self.bd, self.np_), lambda i, j: (i, 0, j, 0))


def _load_params(cfg, A_ref, D_ref, bias_ref):
    A = A_ref[...].astype(F32)
    D = D_ref[...].astype(F32) if cfg.has_d else None
    bias = bias_ref[...].astype(F32) if cfg.has_bias else None
    return A, D, bias


def _delta_at(cfg, delta_ref, bias, t):
    """Raw and effective step size at time ``t``: two ``(bd, 1)`` f32 arrays."""
    raw = delta_ref[:, pl.ds(t, 1)].astype(F32)
    if cfg.has_bias:
        raw = raw + bias
    return raw, (_softplus(raw) if cfg.softplus else raw)


def _chunked_loop(cfg, body, carry, reverse=False):
    """Run ``body(c, t0, steps, carry)`` for each chunk ``c`` (static ``steps``).

    Full chunks go through a ``fori_loop``; the ragged tail (``l % chunk``
    steps) is a separate static call so every inner loop has a static trip
    count.
    """
    nfull, tail = divmod(cfg.l, cfg.chunk)

    def full(i, carry):
        c = (nfull - 1 - i) if reverse else i
        return body(c, c * cfg.chunk, cfg.chunk, carry)

    def run_tail(carry):
        return body(nfull, nfull * cfg.chunk, tail, carry) if tail else carry

    if reverse:
        carry = run_tail(carry)
        return jax.lax.fori_loop(0, nfull, full, carry) if nfull else carry
    carry = jax.lax.fori_loop(0, nfull, full, carry) if nfull else carry
    return run_tail(carry)


# ---------------------------------------------------------------- forward --
def _fwd_kernel(cfg, *refs):
    it = iter(refs)
    u_ref, delta_ref, A_ref, B_ref, C_ref = (next(it) for _ in range(5))
    D_ref = next(it) if cfg.has_d else None
    z_ref = next(it) if cfg.has_z else None
    bias_ref = next(it) if cfg.has_bias else None
    y_ref, last_ref, ck_ref = next(it), next(it), next(it)

    A, D, bias = _load_params(cfg, A_ref, D_ref, bias_ref)

    def step(t, h):
        u_t = u_ref[:, pl.ds(t, 1)].astype(F32)                  # (bd, 1)
        _, dt = _delta_at(cfg, delta_ref, bias, t)               # (bd, 1)
        B_t = B_ref[pl.ds(t, 1), :].astype(F32)                  # (1, np)
        C_t = C_ref[pl.ds(t, 1), :].astype(F32)                  # (1, np)
        h = jnp.exp(dt * A) * h + (dt * u_t) * B_t               # (bd, np)
        y = jnp.sum(h * C_t, axis=1, keepdims=True)              # (bd, 1)
        if cfg.has_d:
            y = y + D * u_t
        if cfg.has_z:
            z_t = z_ref[:, pl.ds(t, 1)].astype(F32)
            y = y * (z_t * _sigmoid(z_t))
        y_ref[:, pl.ds(t, 1)] = y.astype(y_ref.dtype)
        return h

    def chunk(c, t0, steps, h):
        ck_ref[c] = h  # state *before* the chunk, for the backward recompute
        return jax.lax.fori_loop(0, steps, lambda j, h: step(t0 + j, h), h)

    h = _chunked_loop(cfg, chunk, jnp.zeros((cfg.bd, cfg.np_), F32))
    last_ref[...] = h


def _fwd_call(cfg, u, delta, A, B, C, D, z, bias):
    ins = [u, delta, A, B, C]
    specs = [cfg.seq_spec(), cfg.seq_spec(), cfg.chan_spec(cfg.np_), cfg.bc_spec(), cfg.bc_spec()]
    for flag, arr, spec in ((cfg.has_d, D, cfg.chan_spec(1)), (cfg.has_z, z, cfg.seq_spec()),
                            (cfg.has_bias, bias, cfg.chan_spec(1))):
        if flag:
            ins.append(arr)
            specs.append(spec)
    out_shape = (jax.ShapeDtypeStruct((cfg.b, cfg.dp, cfg.l), u.dtype),
                 jax.ShapeDtypeStruct((cfg.b, cfg.dp, cfg.np_), F32),
                 jax.ShapeDtypeStruct((cfg.b, cfg.nck, cfg.dp, cfg.np_), F32))
    out_specs = (cfg.seq_spec(), cfg.state_spec(), cfg.stack_spec(cfg.nck))
    return pl.pallas_call(functools.partial(_fwd_kernel, cfg), out_shape=out_shape,
                          in_specs=specs, out_specs=out_specs,
                          **cfg.pallas_kwargs("selective_scan_fwd"))(*ins)


# --------------------------------------------------------------- backward --
def _bwd_kernel(cfg, *refs):
    it = iter(refs)
    u_ref, delta_ref, A_ref, B_ref, C_ref = (next(it) for _ in range(5))
    D_ref = next(it) if cfg.has_d else None
    z_ref = next(it) if cfg.has_z else None
    bias_ref = next(it) if cfg.has_bias else None
    ck_ref, dy_ref, dlast_ref = next(it), next(it), next(it)
    du_ref, ddelta_ref = next(it), next(it)
    dz_ref = next(it) if cfg.has_z else None
    dA_ref, dD_ref, dbias_ref, dB_ref, dC_ref, hbuf_ref = (next(it) for _ in range(6))

    A, D, bias = _load_params(cfg, A_ref, D_ref, bias_ref)
    barrier = (lambda: None) if cfg.interpret else pltriton.debug_barrier

    def chunk(c, t0, steps, carry):
        h_start = ck_ref[c]  # (bd, np) state before t0

        # Phase 1: recompute this chunk's states into hbuf[j] = h_{t0+j}.
        def recompute(j, h):
            t = t0 + j
            u_t = u_ref[:, pl.ds(t, 1)].astype(F32)
            _, dt = _delta_at(cfg, delta_ref, bias, t)
            B_t = B_ref[pl.ds(t, 1), :].astype(F32)
            h = jnp.exp(dt * A) * h + (dt * u_t) * B_t
            hbuf_ref[j] = h
            return h

        jax.lax.fori_loop(0, steps, recompute, h_start)
        barrier()  # hbuf writes visible to every thread of the program

        # Phase 2: reverse-time adjoint.  g = dL/dh_t (from y_t and the future).
        def reverse(i, carry):
            g, dA_acc, dD_acc, dbias_acc = carry
            j = steps - 1 - i
            t = t0 + j
            h_t = hbuf_ref[j]
            # j == 0 reads the checkpoint instead of hbuf[-1].
            h_prev = jnp.where(j > 0, hbuf_ref[jnp.maximum(j - 1, 0)], h_start)
            u_t = u_ref[:, pl.ds(t, 1)].astype(F32)
            raw, dt = _delta_at(cfg, delta_ref, bias, t)
            B_t = B_ref[pl.ds(t, 1), :].astype(F32)
            C_t = C_ref[pl.ds(t, 1), :].astype(F32)
            dout = dy_ref[:, pl.ds(t, 1)].astype(F32)
            if cfg.has_z:
                z_t = z_ref[:, pl.ds(t, 1)].astype(F32)
                sz = _sigmoid(z_t)
                y_pre = jnp.sum(h_t * C_t, axis=1, keepdims=True)
                if cfg.has_d:
                    y_pre = y_pre + D * u_t
                dz_ref[:, pl.ds(t, 1)] = dout * y_pre * sz * (1.0 + z_t * (1.0 - sz))
                dy = dout * z_t * sz
            else:
                dy = dout
            g = g + dy * C_t                                       # dL/dh_t
            dC_ref[pl.ds(t, 1), :] = jnp.sum(dy * h_t, axis=0, keepdims=True)
            a = jnp.exp(dt * A)
            gh = g * h_prev * a                                    # via a_t = exp(dt*A)
            ddt = jnp.sum(gh * A + g * (u_t * B_t), axis=1, keepdims=True)
            dA_acc = dA_acc + gh * dt
            du = dt * jnp.sum(g * B_t, axis=1, keepdims=True)
            if cfg.has_d:
                du = du + D * dy
                dD_acc = dD_acc + dy * u_t
            dB_ref[pl.ds(t, 1), :] = jnp.sum(g * (dt * u_t), axis=0, keepdims=True)
            if cfg.softplus:
                ddt = ddt * _sigmoid(raw)
            dbias_acc = dbias_acc + ddt
            du_ref[:, pl.ds(t, 1)] = du
            ddelta_ref[:, pl.ds(t, 1)] = ddt
            return g * a, dA_acc, dD_acc, dbias_acc               # g -> dL/dh_{t-1}

        carry = jax.lax.fori_loop(0, steps, reverse, carry)
        barrier()  # next chunk's recompute overwrites hbuf
        return carry

    zeros1 = jnp.zeros((cfg.bd, 1), F32)
    carry = (dlast_ref[...].astype(F32), jnp.zeros((cfg.bd, cfg.np_), F32), zeros1, zeros1)
    _, dA_acc, dD_acc, dbias_acc = _chunked_loop(cfg, chunk, carry, reverse=True)
    dA_ref[...] = dA_acc
    dD_ref[...] = dD_acc
    dbias_ref[...] = dbias_acc


def _bwd_call(cfg, u, delta, A, B, C, D, z, bias, ck, dy, dlast):
    ins = [u, delta, A, B, C]
    specs = [cfg.seq_spec(), cfg.seq_spec(), cfg.chan_spec(cfg.np_), cfg.bc_spec(), cfg.bc_spec()]
    for flag, arr, spec in ((cfg.has_d, D, cfg.chan_spec(1)), (cfg.has_z, z, cfg.seq_spec()),
                            (cfg.has_bias, bias, cfg.chan_spec(1))):
        if flag:
            ins.append(arr)
            specs.append(spec)
    ins += [ck, dy, dlast]
    specs += [cfg.stack_spec(cfg.nck), cfg.seq_spec(), cfg.state_spec()]

    seq = jax.ShapeDtypeStruct((cfg.b, cfg.dp, cfg.l), F32)
    col = jax.ShapeDtypeStruct((cfg.b, cfg.dp, 1), F32)
    col_spec = pl.BlockSpec((None, cfg.bd, 1), lambda i, j: (i, j, 0))
    # dB/dC: one partial sum per channel block; the caller sums a group's blocks.
    bc = jax.ShapeDtypeStruct((cfg.b, cfg.nblocks, cfg.l, cfg.np_), F32)
    bc_spec = pl.BlockSpec((None, None, cfg.l, cfg.np_), lambda i, j: (i, j, 0, 0))
    outs = [seq, seq] + ([seq] if cfg.has_z else [])
    out_specs = [cfg.seq_spec(), cfg.seq_spec()] + ([cfg.seq_spec()] if cfg.has_z else [])
    outs += [jax.ShapeDtypeStruct((cfg.b, cfg.dp, cfg.np_), F32), col, col, bc, bc,
             jax.ShapeDtypeStruct((cfg.b, cfg.chunk, cfg.dp, cfg.np_), F32)]  # hbuf
    out_specs += [cfg.state_spec(), col_spec, col_spec, bc_spec, bc_spec,
                  cfg.stack_spec(cfg.chunk)]
    res = pl.pallas_call(functools.partial(_bwd_kernel, cfg), out_shape=tuple(outs),
                         in_specs=specs, out_specs=tuple(out_specs),
                         **cfg.pallas_kwargs("selective_scan_bwd"))(*ins)
    res = list(res)
    du, ddelta = res[0], res[1]
    dz = res[2] if cfg.has_z else None
    dA_p, dD_p, dbias_p, dB_p, dC_p, _ = res[-6:]
    return du, ddelta, dz, dA_p, dD_p, dbias_p, dB_p, dC_p


# ------------------------------------------------------------ custom_vjp --
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan_core(cfg, u, delta, A, B, C, D, z, bias):
    y, last, _ = _fwd_call(cfg, u, delta, A, B, C, D, z, bias)
    return y, last


def _scan_core_fwd(cfg, u, delta, A, B, C, D, z, bias):
    y, last, ck = _fwd_call(cfg, u, delta, A, B, C, D, z, bias)
    return (y, last), (u, delta, A, B, C, D, z, bias, ck)


def _scan_core_bwd(cfg, res, cts):
    u, delta, A, B, C, D, z, bias, ck = res
    dy, dlast = cts
    du, ddelta, dz, dA_p, dD_p, dbias_p, dB_p, dC_p = _bwd_call(
        cfg, u, delta, A, B, C, D, z, bias, ck, dy, dlast)

    def group_sum(x):  # (b, nblocks, l, np) -> (b, g, l, np)
        return x.reshape(cfg.b, cfg.g, cfg.blocks_per_group, cfg.l, cfg.np_).sum(2)

    def cast(x, like):
        return None if like is None else x.astype(like.dtype)

    return (du.astype(u.dtype), ddelta.astype(delta.dtype), dA_p.sum(0).astype(A.dtype),
            group_sum(dB_p).astype(B.dtype), group_sum(dC_p).astype(C.dtype),
            cast(dD_p.sum(0) if cfg.has_d else None, D),
            cast(dz, z), cast(dbias_p.sum(0) if cfg.has_bias else None, bias))


_scan_core.defvjp(_scan_core_fwd, _scan_core_bwd)


# --------------------------------------------------------------- wrapper --
def choose_block_d(dpg: int, block_d: int = DEFAULT_BLOCK_D) -> int:
    """Power-of-two channel block for ``dpg`` channels per group."""
    return min(_next_pow2(block_d), _next_pow2(dpg))


def selective_scan_pallas(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, interpret=False,
                          block_d=DEFAULT_BLOCK_D, chunk=DEFAULT_CHUNK):
    """Pallas selective scan on validated inputs.

    ``u, delta, z``: ``(b, d, l)``; ``A``: ``(d, n)``; ``B, C``: grouped
    ``(b, g, n, l)``; ``D, delta_bias``: ``(d,)``.  Returns ``y`` ``(b, d, l)``
    in ``u.dtype`` and ``last_state`` ``(b, d, n)`` float32.  Differentiable
    in all array inputs via the Pallas backward kernel.
    """
    b, d, l = u.shape
    g, n = B.shape[1], B.shape[2]
    dpg = d // g
    bd = choose_block_d(dpg, block_d)
    dpg_p = -(-dpg // bd) * bd
    np_ = _next_pow2(n)
    chunk = min(_next_pow2(chunk), _next_pow2(l))
    cfg = _Cfg(b, g * dpg_p, l, np_, g, bd, chunk, D is not None, z is not None,
               delta_bias is not None, bool(delta_softplus), bool(interpret))

    def pad_ch(x, axis):
        """Pad channels per group: axis of size d -> g * dpg_p (no-op if aligned)."""
        if dpg_p == dpg:
            return x
        shape = x.shape
        x = x.reshape(shape[:axis] + (g, dpg) + shape[axis + 1:])
        widths = [(0, 0)] * x.ndim
        widths[axis + 1] = (0, dpg_p - dpg)
        x = jnp.pad(x, widths)
        return x.reshape(shape[:axis] + (g * dpg_p,) + shape[axis + 1:])

    def unpad_ch(x, axis):
        if dpg_p == dpg:
            return x
        shape = x.shape
        x = x.reshape(shape[:axis] + (g, dpg_p) + shape[axis + 1:])
        x = jax.lax.slice_in_dim(x, 0, dpg, axis=axis + 1)
        return x.reshape(shape[:axis] + (d,) + shape[axis + 1:])

    def prep_bc(x):  # (b, g, n, l) -> (b, g, l, np_)
        x = jnp.swapaxes(x, 2, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, np_ - n))) if np_ != n else x

    A_p = pad_ch(A.astype(F32), 0)
    if np_ != n:
        A_p = jnp.pad(A_p, ((0, 0), (0, np_ - n)))
    col = lambda v: None if v is None else pad_ch(v.astype(F32)[:, None], 0)
    y, last = _scan_core(cfg, pad_ch(u, 1), pad_ch(delta, 1), A_p, prep_bc(B), prep_bc(C),
                         col(D), None if z is None else pad_ch(z, 1), col(delta_bias))
    return unpad_ch(y, 1), unpad_ch(last, 1)[..., :n]

def kernel_entry_points(b, d, l, n, groups=1, dtype=F32, *, has_d=True, has_z=True,
                        has_bias=True, softplus=True, block_d=DEFAULT_BLOCK_D,
                        chunk=DEFAULT_CHUNK, sharding=None):
    """The bare forward/backward ``pallas_call``s for one problem size.

    Returns ``{"selective_scan_fwd": (fn, args), "selective_scan_bwd": (fn, args)}``
    where ``args`` are ``jax.ShapeDtypeStruct``s (with ``sharding`` if given)
    in the kernels' padded layouts.  Used for CUDA lowering tests and
    ahead-of-time compilation without wrapper ops around the kernels.
    """
    dpg = d // groups
    bd = choose_block_d(dpg, block_d)
    dp = groups * (-(-dpg // bd) * bd)
    np_ = _next_pow2(n)
    chunk = min(_next_pow2(chunk), _next_pow2(l))
    cfg = _Cfg(b, dp, l, np_, groups, bd, chunk, has_d, has_z, has_bias, softplus, False)

    def S(shape, dt=F32):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding)

    seq, bc = S((b, dp, l), dtype), S((b, groups, l, np_), dtype)
    col = S((dp, 1))
    ins = [seq, seq, S((dp, np_)), bc, bc, col if has_d else None, seq if has_z else None,
           col if has_bias else None]
    bwd_extra = [S((b, cfg.nck, dp, np_)), seq, S((b, dp, np_))]
    return {
        "selective_scan_fwd": (lambda *a: _fwd_call(cfg, *a), ins),
        "selective_scan_bwd": (lambda *a: _bwd_call(cfg, *a), ins + bwd_extra),
    }
