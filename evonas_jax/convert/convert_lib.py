"""Official EvoNAS / VSSD PyTorch weights <-> evonas_jax variables.

`from_official(sd, space, task, target)` fills a freshly initialised evonas_jax variable tree
(`target`, the exact tree `train` would build) from an official state dict, following the one
key table of `evonas_jax.convert.keymap`, and returns it with a report of every source key.
`to_official(variables, space, task)` is the inverse (optionally for one sliced subnet, in the
official standalone "VSSD_final" layout, blocks renumbered 0..n-1 per stage).

Remap (`remap=True`): the official "remap" initialisation, a checkpoint of different *elastic*
widths (e.g. VSSD-T: expand 2, d_state 64, MLP ratio 4) fitted into the supernet (expand 4,
d_state 64, MLP 4) leading-channels first, segment by segment, exactly as the supernet slices
its subnets: the VSSD in_proj rows [z | x | B | C | dt] and conv channels [x | B | C] per
segment, the inner LayerNorm and out_proj over d_inner, the MLP over its hidden width. The
channels beyond the source are filled with the target's own initialisation (pad="init", so
they train) or zeros (pad="zero", the literal zero padding). Either way the subnet with the
source's widths *is* the source network: slicing drops exactly the padding. Wider sources are
sliced to their leading channels. A 3-channel stem into a 1-channel (grey) target sums the
kernel over RGB: exact for grey images fed as (g, g, g). Embedding dims and heads are not
elastic: a preset mismatch is an error.

BatchNorm running variance: flax updates it with the biased batch variance, PyTorch with the
unbiased one (x n/(n-1), n = pixels x batch). The supernet keeps flax's semantics: evaluation
here recalibrates every subnet's statistics exactly (population mean and biased variance of a
calibration set, `evonas_jax.evaluate.bn`), for which the biased variance is the correct one.
The converter copies running_mean / running_var unchanged in both directions: a checkpoint's
stored statistics are data (what a model evaluates with), not an update rule, so a converted
official checkpoint evaluates here exactly as it does in PyTorch and vice versa; only
*further training* accumulates them with the respective rule (a relative difference of
1/(n-1): < 0.1% once n > 1000, e.g. a batch of 16 at 64x64 / 32 at stage 3).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import numpy as np

from evonas_jax.convert import keymap

STATUSES = ("mapped", "remapped", "dropped", "skipped", "unmapped", "kept_init")


@dataclasses.dataclass
class Report:
  """One entry per source key (and per target leaf the source does not provide).

  entries: dicts with "key" (official), "status" (one of STATUSES), and where relevant "path"
  (ours, "collection/a/b/c"), "transform", "source_shape", "target_shape", "note".
  """
  direction: str
  entries: list = dataclasses.field(default_factory=list)

  def add(self, key, status, **kw):
    assert status in STATUSES, status
    self.entries.append({"key": key, "status": status, **kw})

  def counts(self) -> dict:
    out = {s: 0 for s in STATUSES}
    for e in self.entries:
      out[e["status"]] += 1
    return out

  def to_json(self) -> dict:
    return {"direction": self.direction, "counts": self.counts(), "entries": self.entries}

  def summary(self) -> str:
    c = {k: v for k, v in self.counts().items() if v}
    return ", ".join(f"{v} {k}" for k, v in c.items())


# ------------------------------------------------------------------------------ helpers
def normalise_keys(sd: dict) -> dict:
  """Strips DDP's `module.` and the task models' `backbone.` prefixes (the table's keys have
  neither); two keys that collide after stripping are an error."""
  out = {}
  for k, v in sd.items():
    n = k
    # Repeatedly: mmseg's segmentation models nest the backbone as `backbone.backbone.`.
    while n.startswith(("module.", "backbone.")):
      n = n.split(".", 1)[1]
    if n in out:
      raise ValueError(f"state dict: keys {k!r} and another both map to {n!r} after stripping the "
                       "module./backbone. prefixes")
    out[n] = v
  return out


# Where the official task models keep the backbone (mmseg's EncoderDecoder wraps the VSSD
# backbone module in its own `backbone`).
BACKBONE_PREFIX = {"depth": "backbone.", "segmentation": "backbone.backbone."}


def rows_for(space, task: str, blocks_per_stage=None, head_cfg=None) -> list[keymap.Row]:
  """The table's rows for one network: backbone + classifier, or backbone + outnorms + the
  decoder rows of `evonas_jax.convert.keymap_dense` (head_cfg: the run's head config, e.g. the
  depth neck)."""
  rows = keymap.table(space, task, blocks_per_stage)
  if task != "classification":
    from evonas_jax.convert import keymap_dense
    rows += keymap_dense.dense_rows(task, space, dict(head_cfg or {}))
  return rows


def _get(tree, collection, path):
  node = tree.get(collection, {})
  for p in path:
    if not isinstance(node, dict) or p not in node:
      return None
    node = node[p]
  return node


def _set(tree, collection, path, value):
  node = tree[collection]
  for p in path[:-1]:
    node = node[p]
  node[path[-1]] = value


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _mutable(tree):
  """Nested plain dicts of numpy arrays (a copy; flax FrozenDicts and jax arrays accepted)."""
  if hasattr(tree, "items"):
    return {k: _mutable(v) for k, v in tree.items()}
  return np.array(tree)


def _pstr(collection, path) -> str:
  return "/".join((collection,) + tuple(path))


_BASE_TRANSFORMS = ("linear", "conv", "copy")


def _transform(kind, a):
  if kind in _BASE_TRANSFORMS:
    return keymap.to_ours(kind, a)
  from evonas_jax.convert import keymap_dense
  return keymap_dense.to_ours_extra(kind, a)   # raises on an unknown transform name


def _inverse(kind, a):
  if kind in _BASE_TRANSFORMS:
    return keymap.to_official(kind, a)
  from evonas_jax.convert import keymap_dense
  return keymap_dense.to_official_extra(kind, a)


def _official_shape(kind, shape):
  if kind in _BASE_TRANSFORMS:
    return keymap.official_shape(kind, shape)
  from evonas_jax.convert import keymap_dense
  return keymap_dense.official_shape_extra(kind, shape)


# ------------------------------------------------------------------------------ remap
def _segments(path: tuple[str, ...], src_w: dict, dst_w: dict):
  """(axis, source sizes, target sizes) of an elastic leaf, or None (not elastic).

  src_w / dst_w: {"d": d_inner, "n": d_state, "h": heads, "m": MLP hidden} of the block.
  """
  tail = path[-3:]
  if "mixer_vssd" in path:
    d, n, h = src_w["d"], src_w["n"], src_w["h"]
    D, N, H = dst_w["d"], dst_w["n"], dst_w["h"]
    if tail[-2:] == ("in_proj", "kernel"):
      return -1, (d, d, n, n, h), (D, D, N, N, H)
    if tail[-2] == "conv":
      return -1, (d, n, n), (D, N, N)
    if tail[-2] == "norm":
      return -1, (d,), (D,)
    if tail[-2:] == ("out_proj", "kernel"):
      return 0, (d,), (D,)
  if len(tail) == 3 and tail[0] == "mlp":
    m, M = src_w["m"], dst_w["m"]
    if tail[1:] in (("fc1", "kernel"), ("fc1", "bias")):
      return -1, (m,), (M,)
    if tail[1:] == ("fc2", "kernel"):
      return 0, (m,), (M,)
  return None


def _block_widths(get_shape, prefix: str) -> dict | None:
  """Widths of one official block from its arrays' shapes (official layout)."""
  norm, conv = get_shape(prefix + "attn.norm.weight"), get_shape(prefix + "attn.conv2d.weight")
  dt, fc1 = get_shape(prefix + "attn.dt_bias"), get_shape(prefix + "mlp.fc1.weight")
  if fc1 is None:
    return None
  w = {"m": fc1[0]}
  if norm is not None and conv is not None and dt is not None:
    w.update(d=norm[0], n=(conv[0] - norm[0]) // 2, h=dt[0])
  return w


def _fit(a, target, seg, pad: str):
  """Leading channels of each segment of `a` into an array shaped like `target`."""
  axis, src, dst = seg
  axis = axis % a.ndim
  out = np.array(target, dtype=a.dtype) if pad == "init" else np.zeros(target.shape, a.dtype)
  so = do = 0
  for s, d in zip(src, dst):
    k = min(s, d)
    src_idx = [slice(None)] * a.ndim
    dst_idx = [slice(None)] * a.ndim
    src_idx[axis], dst_idx[axis] = slice(so, so + k), slice(do, do + k)
    out[tuple(dst_idx)] = a[tuple(src_idx)]
    so, do = so + s, do + d
  return out


# ------------------------------------------------------------------------------ forward
def from_official(sd: dict, space, task: str, target, *, remap: bool = False, pad: str = "init",
                  skip: Iterable[str] = (), allow_unmapped: bool = False, head_cfg=None):
  """(variables, Report): `target` (evonas_jax {"params", "batch_stats"} of the network `train`
  builds for `space`/`task`) with every table leaf replaced by the converted official array.

  sd: {official key: array} (prefixes are stripped here). skip: regexes of official keys to
  leave out (their target leaves keep the initialisation; e.g. "^head\\." for another number
  of classes). Raises ValueError naming the key on: a source key the table does not know
  (unless allow_unmapped), a table key missing from the source (unless skipped), a shape that
  does not fit (unless remap can fit it).
  """
  if pad not in ("init", "zero"):
    raise ValueError(f"pad={pad!r}; allowed: 'init', 'zero'")
  skip_re = [re.compile(p) for p in skip]
  skipped = lambda k: any(r.search(k) for r in skip_re)
  sd = normalise_keys(sd)
  out = _mutable(target)
  rep = Report("official->evonas_jax")
  rows = rows_for(space, task, head_cfg=head_cfg)
  by_key = {r.official: r for r in rows}
  shape = lambda k: tuple(sd[k].shape) if k in sd else None
  dense_target = task != "classification"
  missing = []
  for r in rows:
    t = _get(out, r.collection, r.path)
    if t is None:
      raise AssertionError(f"key table: {_pstr(r.collection, r.path)} is not in the target tree")
    if skipped(r.official):
      rep.add(r.official, "skipped", path=_pstr(r.collection, r.path),
              note="--skip: target keeps its initialisation")
      continue
    if r.official not in sd:
      if remap and (r.official.startswith("outnorm") or r.path[:1] == ("decoder",)):
        rep.add(r.official, "kept_init", path=_pstr(r.collection, r.path),
                note="not in the source (a classification checkpoint): initialised fresh")
        continue
      missing.append(r.official)
      continue
    a = np.asarray(sd[r.official])
    want = _official_shape(r.transform, t.shape)
    if r.transform not in _BASE_TRANSFORMS and tuple(a.shape) != want:
      raise ValueError(f"{r.official}: shape {tuple(a.shape)} does not fit "
                       f"{_pstr(r.collection, r.path)} (expects official shape {want})")
    conv = _transform(r.transform, a)
    entry = dict(path=_pstr(r.collection, r.path), transform=r.transform,
                 source_shape=list(a.shape), target_shape=list(t.shape))
    if conv.shape == t.shape:
      _set(out, r.collection, r.path, conv.astype(t.dtype))
      rep.add(r.official, "mapped", **entry)
      continue
    if not remap:
      raise ValueError(f"{r.official}: shape {tuple(a.shape)} does not fit {entry['path']} "
                       f"(expects official shape {want}); is the checkpoint of another "
                       "space/preset? (--remap fits other elastic widths)")
    _set(out, r.collection, r.path, _remap_leaf(r, a, conv, t, shape, out, pad, entry))
    rep.add(r.official, "remapped", **entry)
  if missing:
    raise ValueError(f"the source lacks {len(missing)} keys the network needs, e.g. "
                     f"{missing[:4]}; is it an EvoNAS/VSSD {task} checkpoint of this "
                     "space/preset? (--skip REGEX leaves keys at their initialisation)")
  unmapped = []
  for k in sd:
    if k in by_key:
      continue
    if k.endswith(keymap.DROPPED_SUFFIXES):
      rep.add(k, "dropped", note="BatchNorm step counter: flax keeps none")
    elif skipped(k):
      rep.add(k, "skipped", source_shape=list(sd[k].shape), note="--skip")
    elif remap and dense_target and re.match(r"^(norm|head)\.", k):
      rep.add(k, "dropped", source_shape=list(sd[k].shape),
              note="classifier of a classification checkpoint: a dense network has none")
    else:
      unmapped.append(k)
      rep.add(k, "unmapped", source_shape=list(sd[k].shape))
  if unmapped and not allow_unmapped:
    raise ValueError(f"{len(unmapped)} source keys have no evonas_jax counterpart, e.g. "
                     f"{unmapped[:4]} (pass --allow_unmapped to drop them, listed in the "
                     "report)")
  # Leaves of the target no row fills (e.g. the hybrid space's extra mixers): fresh init.
  filled = {(r.collection, r.path) for r in rows}
  for coll in ("params", "batch_stats"):
    for path, _ in _leaves(out.get(coll, {})):
      if (coll, path) not in filled:
        rep.add(None, "kept_init", path=_pstr(coll, path),
                note="no official counterpart: initialised fresh")
  return out, rep


def _remap_leaf(r, a, conv, t, shape, out, pad, entry):
  """Fits one leaf of other elastic widths (see the module docstring); fills entry["note"]."""
  path = r.path
  if path[-2:] == ("conv1", "kernel") and "stem" in path:
    if conv.shape[:2] == t.shape[:2] and conv.shape[3] == t.shape[3] and conv.shape[2] == 3 \
        and t.shape[2] == 1:
      entry["note"] = "RGB stem kernel summed over its input channels (grey input)"
      return conv.sum(axis=2, keepdims=True).astype(t.dtype)
  m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.", r.official)
  seg = None
  if m:
    prefix = m.group(0)
    src_w = _block_widths(shape, prefix)
    stage_at = next(j for j, p in enumerate(path) if p.startswith("stage"))
    dst_w = _target_widths(out, path[:stage_at + 1])
    if src_w is not None:
      seg = _segments(path, {**dst_w, **src_w}, dst_w)
  if seg is None:
    raise ValueError(f"{r.official}: shape {tuple(a.shape)} does not fit {entry['path']} "
                     f"{tuple(t.shape)}, and that axis is not elastic (embedding dims and heads "
                     "are fixed by the preset: use the preset of the checkpoint, 'base' for the "
                     "official VSSD-T / EvoNAS weights)")
  axis, src, dst = seg
  rest_c = np.delete(np.array(conv.shape), axis % conv.ndim)
  rest_t = np.delete(np.array(t.shape), axis % t.ndim)
  if sum(src) != conv.shape[axis] or sum(dst) != t.shape[axis] or not np.array_equal(rest_c,
                                                                                      rest_t):
    raise ValueError(f"{r.official}: shape {tuple(a.shape)} cannot be remapped into "
                     f"{entry['path']} {tuple(t.shape)} (segments {src} -> {dst})")
  verb = "padded" if all(s <= d for s, d in zip(src, dst)) else "sliced"
  entry["note"] = (f"{verb} segment-wise {list(src)} -> {list(dst)} along axis {axis} "
                   f"(fill: {pad})")
  return _fit(conv, t, seg, pad).astype(t.dtype)


def _target_widths(tree, block_path) -> dict:
  p = _get(tree, "params", block_path)
  w = {"m": p["mlp"]["fc1"]["bias"].shape[0]}
  if "mixer_vssd" in p:
    mx = p["mixer_vssd"]
    d = mx["norm"]["scale"].shape[0]
    w.update(d=d, n=(mx["conv"]["bias"].shape[0] - d) // 2, h=mx["D"].shape[0])
  return w


# ------------------------------------------------------------------------------ reverse
def to_official(variables, space, task: str, *, arch=None, allow_unmapped: bool = False,
                head_cfg=None):
  """({official key: array}, Report) of evonas_jax variables.

  variables: the supernet's {"params", "batch_stats"} (as `train` writes them). arch: an
  `evonas_jax.space.Arch` to export that one subnet, sliced, in the official standalone layout
  (blocks renumbered 0..n-1 per stage); None exports the supernet in the official supernet
  layout. Dense tasks prefix the backbone keys with `backbone.` as the official task models do.
  Leaves without an official counterpart (hybrid-space SS2D mixers, unmapped decoder layers,
  CA-DDKD projectors) are an error naming them unless allow_unmapped.
  """
  v = _mutable(variables)
  blocks = None
  renumber = {}
  if arch is not None:
    if task == "classification":
      from evonas_jax.nn.supernet import extract_subnet
      v = _mutable(extract_subnet(v, space, arch))
    else:
      from evonas_jax.nn.dense import extract_dense_subnet
      v = _mutable(extract_dense_subnet(v, space, arch))
    blocks = [list(arch.active_blocks(s)) for s in range(space.num_stages)]
    for s, idx in enumerate(blocks):
      for j, i in enumerate(idx):
        renumber[f"layers.{s}.blocks.{i}."] = f"layers.{s}.blocks.{j}."
    if any(arch.block_type[s] != space.default_types[s] for s in range(space.num_stages)):
      bad = [s + 1 for s in range(space.num_stages) if arch.block_type[s] != space.default_types[s]]
      raise ValueError(f"arch has block types {arch.block_type}: stages {bad} differ from the "
                       f"official types {space.default_types}; the official network cannot hold "
                       "them")
  rows = rows_for(space, task, blocks, head_cfg)
  rep = Report("evonas_jax->official")
  sd = {}
  for r in rows:
    a = _get(v, r.collection, r.path)
    if a is None:
      raise ValueError(f"{_pstr(r.collection, r.path)} is missing from the variables (are they "
                       f"a {task} supernet of space {space.name}/{space.preset}?)")
    key = r.official
    m = re.match(r"^layers\.\d+\.blocks\.\d+\.", key)
    if m and m.group(0) in renumber:
      key = renumber[m.group(0)] + key[m.end():]
    if task != "classification" and (r.path[0] == "backbone" or r.path[0].startswith("outnorm")):
      key = BACKBONE_PREFIX[task] + key
    sd[key] = _inverse(r.transform, np.asarray(a))
    rep.add(key, "mapped", path=_pstr(r.collection, r.path), transform=r.transform,
            source_shape=list(np.shape(a)), target_shape=list(sd[key].shape))
    if r.collection == "batch_stats" and r.path[-1] == "var":
      nbt = key[:-len("running_var")] + "num_batches_tracked"
      sd[nbt] = np.zeros((), np.int64)
  filled = {(r.collection, r.path) for r in rows}
  left = [_pstr(c, p) for c in ("params", "batch_stats") for p, _ in _leaves(v.get(c, {}))
          if (c, p) not in filled]
  for p in left:
    rep.add(None, "unmapped", path=p, note="no official counterpart: not exported")
  if left and not allow_unmapped:
    raise ValueError(f"{len(left)} evonas_jax leaves have no official counterpart, e.g. "
                     f"{left[:4]} (pass --allow_unmapped to leave them out, listed in the report)")
  return sd, rep
