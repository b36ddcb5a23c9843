"""The EvoNet backbone as host-composed, per-piece compiled programs: pay only for the subnet.

Masked mode (`EvoNet(supernet_spec)` + masks) computes the whole supernet for every subnet: full
widths, and skipped blocks computed then discarded by `jnp.where`. Here the backbone of one
subnet is run as a short host loop over compiled pieces, each at the subnet's own widths:

  stem                                   one program
  downsample{s}                          one program per stage
  block "mixer half"  x + mixer(LN(x + cpe1(x)))         keyed by (stage, type, d_inner, d_state)
  block "mlp half"    x + mlp(LN(x + cpe2(x)))           keyed by (stage, mlp hidden)

Skipped blocks are not run at all. A block is split in two halves because its two elastic parts
vary independently: per VSSD stage 5 expand x 4 d_state + 6 mlp = 26 programs instead of
6 x 5 x 4 = 120 for whole blocks. Every block of a stage shares its stage's programs (same
shapes; the params are arguments), so the number of compiled programs is bounded by the space,
not by the number of subnets sampled, and the persistent compilation cache
(`evonas_jax.compile_cache`) makes a second run compile nothing.

Each training piece is compiled twice: a forward that returns its output and its `jax.vjp`
residuals (a pytree, returned from the compiled function), and a backward that consumes them.
The host composes the network forward, then walks the pieces in reverse. Weights are sliced to
the subnet's widths inside each program (static slices), so a piece's parameter gradient is the
supernet-shaped gradient with exact zeros outside the subnet, the same as masked mode's.

Measured on XLA:CPU (see benchmarks/train_step.py): this beats one compiled program with
`lax.cond`/`lax.switch` per block, whose backward is several times slower than the same graph
unrolled; and the per-piece dispatch overhead (tens of microseconds) is small against a block.

Data parallelism: the programs are plain `jax.jit` functions; fed a batch sharded over a mesh
axis and replicated params, XLA partitions them (GSPMD), BatchNorm batch statistics are global
(the SyncBN of the shard_map path) and parameter gradients are all-reduced.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from evonas_jax.nn.block import MIXERS, Widths
from evonas_jax.nn.layers import DWConv, LayerNorm, gelu
from evonas_jax.nn.mlp import Mlp
from evonas_jax.nn.stem import PatchMerging, Stem
from evonas_jax.nn.supernet import subnet_widths, supernet_spec
from evonas_jax.space import Arch, SearchSpace
from evonas_jax.engine.tail import cast_tree as _cast


def _drop_path(y, rate, rng):
  """Stochastic depth with a traced rate (one compiled piece serves every block position)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (y.shape[0],) + (1,) * (y.ndim - 1))
  return jnp.where(keep, y / (1.0 - rate), 0.0)


@dataclasses.dataclass(frozen=True)
class MixerSig:
  """Static signature of a mixer half: stage, mixer type, supernet and subnet widths."""
  stage: int
  type: str
  full: Widths
  sub: Widths


@dataclasses.dataclass(frozen=True)
class MlpSig:
  stage: int
  hidden: int


def mixer_half(p, x, rng, rate, *, sig: MixerSig, train: bool, drop: bool, scan_backend: str,
               dtype=None):
  """x (B, H, W, C) -> x + drop_path(mixer(LN(x'))) with x' = x + cpe1(x); returns x'-based sum.

  p: {"cpe1", "norm1", "mixer_<type>"} of one supernet block (supernet widths).
  """
  t, sub = sig.type, sig.sub
  p = _cast(p, dtype)
  pm = MIXERS[t].slice_params(p[f"mixer_{t}"], sig.full, sub)
  c = x.shape[-1]
  x = x + DWConv(c).apply({"params": p["cpe1"]}, x)
  h = LayerNorm().apply({"params": p["norm1"]}, x)
  kw = {"scan_backend": scan_backend} if t == "ss2d" else {}
  y = MIXERS[t](sub.heads, sub.d_inner, sub.d_state, **kw).apply({"params": pm}, h)
  if train and drop:
    y = _drop_path(y, rate, rng)
  return x + y


def mlp_half(p, x, rng, rate, *, sig: MlpSig, train: bool, drop: bool, dtype=None):
  """x (B, H, W, C) -> x' + drop_path(mlp(LN(x'))), x' = x + cpe2(x). p: {"cpe2", "norm2", "mlp"}."""
  p = _cast(p, dtype)
  c = x.shape[-1]
  x = x + DWConv(c).apply({"params": p["cpe2"]}, x)
  h = LayerNorm().apply({"params": p["norm2"]}, x)
  y = Mlp(sig.hidden).apply({"params": Mlp.slice_params(p["mlp"], sig.hidden)}, h)
  if train and drop:
    y = _drop_path(y, rate, rng)
  return x + y


def stem_fn(p, bs, images, *, dim: int, train: bool, dtype=None):
  """images (B, H, W, Cin) -> ((B, H/4, W/4, dim), new batch_stats)."""
  v = {"params": _cast(p, dtype), "batch_stats": bs}
  x = images if dtype is None else images.astype(dtype)
  if not train:
    return Stem(dim).apply(v, x, train=False), bs
  y, upd = Stem(dim).apply(v, x, train=True, mutable=["batch_stats"])
  return y, upd["batch_stats"]


def down_fn(p, bs, x, *, dim: int, train: bool, dtype=None):
  """(B, H, W, C) -> ((B, H/2, W/2, dim), new batch_stats)."""
  v = {"params": _cast(p, dtype), "batch_stats": bs}
  if not train:
    return PatchMerging(dim).apply(v, x, train=False), bs
  y, upd = PatchMerging(dim).apply(v, x, train=True, mutable=["batch_stats"])
  return y, upd["batch_stats"]


MIXER_KEYS = ("cpe1", "norm1")
MLP_KEYS = ("cpe2", "norm2", "mlp")


@dataclasses.dataclass
class Tape:
  """What the forward of one subnet leaves for its backward (host objects)."""
  stem_vjp: Any         # (vjp residuals, backward program)
  pieces: list          # per stage: [(kind, block_key, vjp, backward program), ...], forward order
  down_vjps: dict       # stage -> (vjp, backward program)
  block_keys: list      # supernet block param names that ran


class CompiledBackbone:
  """Forward / backward of EvoNet backbones at the sampled subnet's widths.

  space, drop_path_rate: as the supernet (`supernet_spec(space, drop_path_rate)`).
  stats: an `evonas_jax.compile_cache.CompileStats`-like object with `.programs` (set of keys), or
  None; each new program key is added to it (the number of distinct programs built).
  """

  def __init__(self, space: SearchSpace, drop_path_rate: float = 0.0, scan_backend: str = "auto",
               compute_dtype=None):
    self.space = space
    self.spec = supernet_spec(space, drop_path_rate)
    self.drop = drop_path_rate > 0
    self.scan_backend = scan_backend
    self.dtype = compute_dtype
    self.programs: set = set()    # keys of the programs built so far (each compiled once)
    # Per-piece profiling (benchmarks): {piece kind: [seconds, calls]} when set; each piece is
    # then waited for, which removes the overlap of host dispatch and device work.
    self.timer: dict | None = None
    # Wait for each piece before dispatching the next. Needed on several XLA:CPU devices: the
    # pieces' all-reduces rendezvous on a thread pool the size of the machine, and many small
    # programs in flight at once starved it (measured: "8 threads expected, 6 arrived" abort
    # with 8 fake devices on 2 cores).
    self.sync = False
    self._fwd, self._bwd, self._inf = {}, {}, {}

  # ---------------------------------------------------------------- program cache
  def _program(self, kind: str, key, fn, train: bool):
    """A jitted fn: train -> returns (y, vjp[, aux]) ; eval -> returns y (and aux)."""
    table = self._fwd if train else self._inf
    k = (kind, key)
    if k not in table:
      self.programs.add((kind, key, "train" if train else "eval"))
      table[k] = jax.jit(fn)
      if train:
        # One backward program per forward program: a jit shared by all pieces would be keyed
        # on the vjp pytree's structure alone, which two different pieces can share.
        self._bwd[k] = jax.jit(lambda vjp, dy: vjp(dy))
    return table[k]

  def _backward_of(self, kind: str, key):
    return self._bwd[(kind, key)]

  def _half_prog(self, kind: str, sig, f, train: bool):
    """Program of a block half f(p, x, rng, rate): with its vjp residuals when training."""
    if train:
      def fwd(p, x, rng, rate):
        return jax.vjp(lambda p_, x_: f(p_, x_, rng, rate), p, x)
    else:
      fwd = f
    return self._program(kind, sig, fwd, train)

  def _mixer_prog(self, sig: MixerSig, train: bool):
    return self._half_prog("mixer", sig, functools.partial(
        mixer_half, sig=sig, train=train, drop=self.drop, scan_backend=self.scan_backend,
        dtype=self.dtype), train)

  def _mlp_prog(self, sig: MlpSig, train: bool):
    return self._half_prog("mlp", sig, functools.partial(
        mlp_half, sig=sig, train=train, drop=self.drop, dtype=self.dtype), train)

  def _stem_prog(self, train: bool, bn_train: bool):
    f = functools.partial(stem_fn, dim=self.spec.dims[0], train=bn_train, dtype=self.dtype)
    if train:
      def fwd(p, bs, images):
        y, vjp, new_bs = jax.vjp(lambda p_: f(p_, bs, images), p, has_aux=True)
        return y, vjp, new_bs
    else:
      fwd = f
    return self._program("stem", bn_train, fwd, train)

  def _down_prog(self, s: int, train: bool, bn_train: bool):
    f = functools.partial(down_fn, dim=self.spec.dims[s], train=bn_train, dtype=self.dtype)
    if train:
      def fwd(p, bs, x):
        y, vjp, new_bs = jax.vjp(lambda p_, x_: f(p_, bs, x_), p, x, has_aux=True)
        return y, vjp, new_bs
    else:
      fwd = f
    return self._program("down", (s, bn_train), fwd, train)

  def _call(self, kind: str, fn, *args):
    if self.timer is None:
      out = fn(*args)
      if self.sync:
        jax.block_until_ready(out)
      return out
    import time
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    acc = self.timer.setdefault(kind, [0.0, 0])
    acc[0] += time.perf_counter() - t0
    acc[1] += 1
    return out

  # ---------------------------------------------------------------- signatures
  def signatures(self, arch: Arch, s: int) -> tuple[MixerSig, MlpSig]:
    hidden, sub = subnet_widths(self.space, arch, s)
    full = self.spec.stages[s][0].widths
    t = arch.block_type[s]
    if t == "attention":   # not elastic: one program whatever the (inert) SSM genes say
      sub = full
    return MixerSig(s, t, full, sub), MlpSig(s, hidden)

  def _rate(self, s: int, i: int):
    return jnp.float32(self.spec.stages[s][i].drop_path)

  @staticmethod
  def _block_rng(rng, s: int, i: int, half: int):
    return jax.random.fold_in(rng, 1000 * s + 2 * i + half)

  # ---------------------------------------------------------------- forward
  def forward(self, params, batch_stats, images, arch: Arch, *, train: bool, rng=None,
              bn_train: bool | None = None):
    """Backbone of `arch`: images (B, H, W, Cin) -> (feats [4 x (B, H_s, W_s, dims[s])],
    new batch_stats, tape).

    params/batch_stats: EvoNet backbone trees (keys stem, downsample{s}, stage{s}_block{i}).
    train=True: keep vjp residuals in the tape (for `backward`) and apply drop-path with `rng`;
    bn_train: BatchNorm in train mode (batch statistics, updated running stats); defaults to
    `train` (BN recalibration is bn_train=True with train=False).
    """
    bn_train = train if bn_train is None else bn_train
    rng = jax.random.key(0) if rng is None else rng
    new_bs = dict(batch_stats)
    tape = Tape(None, [], {}, [])
    if train:
      x, vjp, new_bs["stem"] = self._call(
          "stem_fwd", self._stem_prog(True, bn_train), params["stem"], batch_stats["stem"],
          images)
      tape.stem_vjp = (vjp, self._backward_of("stem", bn_train))
    else:
      x, new_bs["stem"] = self._call("stem_fwd", self._stem_prog(False, bn_train),
                                     params["stem"], batch_stats["stem"], images)
    feats = []
    for s in range(self.space.num_stages):
      if s > 0:
        name = f"downsample{s}"
        if train:
          x, vjp, new_bs[name] = self._call(
              "downsample_fwd", self._down_prog(s, True, bn_train), params[name],
              batch_stats[name], x)
          tape.down_vjps[s] = (vjp, self._backward_of("down", (s, bn_train)))
        else:
          x, new_bs[name] = self._call("downsample_fwd", self._down_prog(s, False, bn_train),
                                       params[name], batch_stats[name], x)
      msig, lsig = self.signatures(arch, s)
      mix, mlp = self._mixer_prog(msig, train), self._mlp_prog(lsig, train)
      pieces = []
      mixer_kind = f"{msig.type}_mixer"
      for i in arch.active_blocks(s):
        key = f"stage{s}_block{i}"
        p = params[key]
        pmix = {k: p[k] for k in MIXER_KEYS}
        pmix[f"mixer_{msig.type}"] = p[f"mixer_{msig.type}"]
        pmlp = {k: p[k] for k in MLP_KEYS}
        rate = self._rate(s, i)
        if train:
          x, vjp = self._call(f"{msig.type}_mixer_fwd", mix, pmix, x,
                              self._block_rng(rng, s, i, 0), rate)
          pieces.append((mixer_kind, key, vjp, self._backward_of("mixer", msig)))
          x, vjp = self._call("mlp_fwd", mlp, pmlp, x, self._block_rng(rng, s, i, 1), rate)
          pieces.append(("mlp", key, vjp, self._backward_of("mlp", lsig)))
          tape.block_keys.append(key)
        else:
          x = self._call(f"{msig.type}_mixer_fwd", mix, pmix, x, self._block_rng(rng, s, i, 0),
                         rate)
          x = self._call("mlp_fwd", mlp, pmlp, x, self._block_rng(rng, s, i, 1), rate)
      tape.pieces.append(pieces)
      feats.append(x)
    return feats, new_bs, tape

  # ---------------------------------------------------------------- backward
  def backward(self, tape: Tape, dfeats):
    """Cotangents of the four stage outputs -> {param name: gradient subtree} for the pieces that
    ran (supernet-shaped leaves; a block's dict holds only the mixer type that ran)."""
    grads: dict = {}
    dx = None
    for s in reversed(range(self.space.num_stages)):
      dx = dfeats[s] if dx is None else dx + dfeats[s]
      for kind, key, vjp, bwd in reversed(tape.pieces[s]):
        dp, dx = self._call(f"{kind}_bwd", bwd, vjp, dx)
        grads.setdefault(key, {}).update(dp)
      if s > 0:
        vjp, bwd = tape.down_vjps[s]
        dp, dx = self._call("downsample_bwd", bwd, vjp, dx)
        grads[f"downsample{s}"] = dp
    vjp, bwd = tape.stem_vjp
    (grads["stem"],) = self._call("stem_bwd", bwd, vjp, dx)
    return grads
