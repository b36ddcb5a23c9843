"""The dense-decoder key table (evonas_jax.convert.keymap_dense) against our DenseEvoNet variables
and against the official decoders' state-dict shapes, written out here from the official
constructors (MambaDepth / UPerHead_with_mamba + FCNHead, SpatialMambaLayer, StripPooling), not
from our modules. Our variables come from jax.eval_shape of the real init (no compile).
"""
import functools
import math

import jax
import numpy as np
import pytest

from evonas_jax.convert import keymap
from evonas_jax.convert import keymap_dense as kd
from evonas_jax.nn.dense import init_dense_model
from evonas_jax.space import get_space

K = 5                 # segmentation classes
IMAGE = (64, 64, 3)
FINAL_DIMS = 64       # MambaDepth's final_dims (a constant there)
SEG_CHANNELS = 512    # UPerHead_with_mamba `channels` (ADE20K config); ours fpn_channels default
AUX_CHANNELS = 256    # FCNHead channels; ours aux_channels default


# ------------------------------------------------------------------------------ ours
@functools.lru_cache(maxsize=None)
def _ours(task, preset, neck="sp"):
  """{(collection, path): shape} of the DenseEvoNet decoder leaves."""
  cfg = {"neck": neck} if task == "depth" and neck != "sp" else None
  v = jax.eval_shape(
      lambda k: init_dense_model(get_space("evonas", preset), task, cfg,
                                 K if task == "segmentation" else 0, 10.0, k, IMAGE)[1],
      jax.random.key(0))
  out = {}
  for coll in v:
    for path, leaf in jax.tree_util.tree_flatten_with_path(v[coll])[0]:
      keys = tuple(p.key for p in path)
      if keys[0] == "decoder":
        out[(coll, keys)] = tuple(leaf.shape)
  return out


# ------------------------------------------------------------------------------ official shapes
def _bn(m, c):
  return {f"{m}.weight": (c,), f"{m}.bias": (c,), f"{m}.running_mean": (c,),
          f"{m}.running_var": (c,), f"{m}.num_batches_tracked": ()}


def _ln(m, c):
  return {f"{m}.weight": (c,), f"{m}.bias": (c,)}


def _official_spatial_mamba_layer(m, c, d_state=1, mlp_ratio=4.0, expand=2):
  """SpatialMambaLayer(dim=c, depth=1, d_state): one SpatialMambaBlock(hidden_dim=c)."""
  b, sa = f"{m}.blocks.0", f"{m}.blocks.0.self_attention"
  d, r, hid = expand * c, math.ceil(c / 16), int(c * mlp_ratio)
  out = {f"{b}.cpe1.weight": (c, 1, 3, 3), f"{b}.cpe1.bias": (c,), **_ln(f"{b}.ln_1", c),
         f"{sa}.in_proj.weight": (2 * d, c),
         f"{sa}.conv2d.weight": (d, 1, 3, 3), f"{sa}.conv2d.bias": (d,),
         f"{sa}.x_proj_weight": (r + 2 * d_state, d),
         f"{sa}.dt_projs_weight": (d, r), f"{sa}.dt_projs_bias": (d,),
         f"{sa}.A_logs": (d, d_state), f"{sa}.Ds": (d,),
         f"{sa}.state_fusion.kernel_3": (d, 1, 3, 3),
         f"{sa}.state_fusion.kernel_3_1": (d, 1, 3, 3),
         f"{sa}.state_fusion.kernel_3_2": (d, 1, 3, 3),
         f"{sa}.state_fusion.alpha": (3,),
         **_ln(f"{sa}.out_norm", d), f"{sa}.out_proj.weight": (c, d),
         f"{b}.cpe2.weight": (c, 1, 3, 3), f"{b}.cpe2.bias": (c,), **_ln(f"{b}.ln_2", c),
         f"{b}.mlp.fc1.weight": (hid, c), f"{b}.mlp.fc1.bias": (hid,),
         f"{b}.mlp.fc2.weight": (c, hid), f"{b}.mlp.fc2.bias": (c,)}
  return out


def _official_strip_pooling(m, c):
  i = int(c / 4)
  convs = {"conv1_1": (i, c, 1, 1), "conv1_2": (i, c, 1, 1), "conv2_0": (i, i, 3, 3),
           "conv2_1": (i, i, 3, 3), "conv2_2": (i, i, 3, 3), "conv2_3": (i, i, 1, 3),
           "conv2_4": (i, i, 3, 1), "conv2_5": (i, i, 3, 3), "conv2_6": (i, i, 3, 3),
           "conv3": (c, 2 * i, 1, 1)}
  out = {}
  for name, shape in convs.items():
    out[f"{m}.{name}.0.weight"] = shape
    out.update(_bn(f"{m}.{name}.1", shape[0]))
  return out


def _conv(m, cout, cin, k, bias=True):
  out = {f"{m}.weight": (cout, cin, k, k)}
  if bias:
    out[f"{m}.bias"] = (cout,)
  return out


def _conv_module(m, cout, cin, k):   # mmcv ConvModule with BN: no conv bias
  return {**_conv(f"{m}.conv", cout, cin, k, bias=False), **_bn(f"{m}.bn", cout)}


def official_depth(dims, neck="sp"):
  """MambaDepth's decoder state dict shapes (VSSD backbone: no use_proj adapters)."""
  out = {}
  if neck == "sp":
    for j in range(2):
      out.update(_official_strip_pooling(f"PPM.{j}", dims[3]))
  for s in (3, 2, 1, 0):
    out.update(_official_spatial_mamba_layer(f"spa_mab{s}", dims[s]))
  for s in (3, 2, 1):
    out.update(_conv(f"proj_out{s}", 2 * dims[s], dims[s], 3))
  out.update(_conv("proj_final", FINAL_DIMS, dims[0], 3))
  out.update(_conv("disp_head1.conv1", 1, FINAL_DIMS, 3))
  return out


def official_seg(dims, channels=SEG_CHANNELS, aux=AUX_CHANNELS, k=K):
  """UPerHead_with_mamba (`decode_head.`) + FCNHead num_convs=1 (`auxiliary_head.`) shapes."""
  h, out = "decode_head", {}
  for j in range(2):
    out.update(_official_strip_pooling(f"{h}.PPM.{j}", dims[3]))
  out.update(_conv_module(f"{h}.fpn_bottleneck", channels, 4 * channels, 3))
  for s in (2, 1, 0):
    out.update(_official_spatial_mamba_layer(f"{h}.spa_mab{s}", dims[s]))
  for s in (3, 2, 1):
    out.update(_conv_module(f"{h}.proj_out{s}", dims[s] // 2, dims[s], 1))
  out.update(_conv_module(f"{h}.proj_final", channels, dims[0], 3))
  for s in (3, 2, 1):
    out.update(_conv_module(f"{h}.conv_p{s}", channels, dims[s], 3))
  out.update(_conv(f"{h}.conv_seg", k, channels, 1))
  out.update(_conv_module("auxiliary_head.convs.0", aux, dims[2], 3))
  out.update(_conv("auxiliary_head.conv_seg", k, aux, 1))
  return out


_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


def _official_param_count(shapes):
  return sum(int(np.prod(s)) for key, s in shapes.items() if not key.endswith(_BUFFERS))


def _official(task, preset, neck="sp"):
  dims = get_space("evonas", preset).dims
  return official_depth(dims, neck) if task == "depth" else official_seg(dims)


def _rows(task, preset, neck="sp"):
  cfg = {"neck": neck} if task == "depth" else None
  return kd.dense_rows(task, get_space("evonas", preset), cfg)


def _to_ours(kind, a):
  return kd.to_ours_extra(kind, a) if kind in kd.EXTRA_TRANSFORMS else keymap.to_ours(kind, a)


def _to_official(kind, a):
  return (kd.to_official_extra(kind, a) if kind in kd.EXTRA_TRANSFORMS
          else keymap.to_official(kind, a))


def _official_shape(kind, shape):
  return (kd.official_shape_extra(kind, shape) if kind in kd.EXTRA_TRANSFORMS
          else keymap.official_shape(kind, shape))


# ------------------------------------------------------------------------------ tests
CASES = [("depth", "sp"), ("depth", "none"), ("segmentation", "sp")]


@pytest.mark.parametrize("task,neck", CASES)
def test_rows_are_our_leaves_one_to_one(task, neck):
  """(a) every row names an existing leaf (tiny preset), no path or key twice, and the rows
  cover every decoder leaf (nothing of ours is left without an official source)."""
  rows, ours = _rows(task, "tiny", neck), _ours(task, "tiny", neck)
  paths = [(r.collection, r.path) for r in rows]
  keys = [r.official for r in rows]
  assert len(set(paths)) == len(paths)
  assert len(set(keys)) == len(keys)
  missing = [p for p in paths if p not in ours]
  assert not missing, missing[:5]
  assert set(paths) == set(ours), sorted(set(ours) - set(paths))[:5]
  assert all(r.transform in ("linear", "conv", "copy") + kd.EXTRA_TRANSFORMS for r in rows)
  assert all(r.path[0] == "decoder" for r in rows)


@pytest.mark.parametrize("task,neck", CASES)
def test_rows_are_the_official_keys(task, neck):
  """The table's official keys are exactly the official decoder's keys (num_batches_tracked,
  which keymap drops, aside), and none is also listed as unmapped."""
  off = _official(task, "base", neck)
  want = {k for k in off if not k.endswith(keymap.DROPPED_SUFFIXES)}
  got = {r.official for r in _rows(task, "base", neck)}
  assert got == want, (sorted(got - want)[:5], sorted(want - got)[:5])
  unmapped = {t.format(s=s, i=i) for t in kd.UNMAPPED_OFFICIAL for s in range(4) for i in range(4)}
  assert not got & unmapped


@pytest.mark.parametrize("task,neck", CASES)
def test_official_arrays_convert_to_our_shapes_at_base(task, neck):
  """(b) a synthetic official state dict (official shapes, random values) converts row by row to
  exactly our shapes, and back to the same official array."""
  off, ours = _official(task, "base", neck), _ours(task, "base", neck)
  rng = np.random.default_rng(0)
  for r in _rows(task, "base", neck):
    a = rng.normal(size=off[r.official]).astype(np.float32)
    b = _to_ours(r.transform, a)
    assert b.shape == ours[(r.collection, r.path)], (r.official, b.shape)
    assert _official_shape(r.transform, b.shape) == a.shape, r.official
    np.testing.assert_array_equal(_to_official(r.transform, b), a)


def test_depth_shapes_at_tiny_differ_only_in_the_final_width():
  """At the tiny preset (official width_multiplier 0.25: 16/32/64/128) only proj_final and
  disp_head1 differ: the official final width is 64 whatever the widths, ours is d0 = 16."""
  off, ours = _official("depth", "tiny"), _ours("depth", "tiny")
  bad = {r.official for r in _rows("depth", "tiny")
         if _to_ours(r.transform, np.zeros(off[r.official], np.float32)).shape
         != ours[(r.collection, r.path)]}
  assert bad == {"proj_final.weight", "proj_final.bias", "disp_head1.conv1.weight"}


def _our_param_count(ours):
  return sum(int(np.prod(s)) for (coll, _), s in ours.items() if coll == "params")


@pytest.mark.parametrize("task,neck", CASES)
def test_parameter_counts_match_at_base(task, neck):
  """(c) mapped params == our decoder params == the official decoder's parameter count."""
  ours, rows = _ours(task, "base", neck), _rows(task, "base", neck)
  mapped = sum(int(np.prod(ours[(r.collection, r.path)])) for r in rows
               if r.collection == "params")
  official = _official_param_count(_official(task, "base", neck))
  assert mapped == _our_param_count(ours) == official
  # The same count from the closed form of the official constructors, per module:
  dims = get_space("evonas", "base").dims

  def block(c):
    d, r = 2 * c, math.ceil(c / 16)
    return (2 * (10 * c + 2 * c) + 2 * d * c + 10 * d + (r + 2) * d + d * r + 3 * d
            + 27 * d + 3 + 2 * d + c * d + 8 * c * c + 5 * c)

  def strip(c):
    i = c // 4
    return (2 * (c * i + 2 * i) + 5 * (9 * i * i + 2 * i) + 2 * (3 * i * i + 2 * i)
            + 2 * i * c + 2 * c)

  if task == "depth":
    n = sum(block(c) for c in dims) + sum(18 * c * c + 2 * c for c in dims[1:])
    n += 9 * dims[0] * FINAL_DIMS + FINAL_DIMS + 9 * FINAL_DIMS + 1
    n += 2 * strip(dims[3]) if neck == "sp" else 0
  else:
    ch, a = SEG_CHANNELS, AUX_CHANNELS
    n = 2 * strip(dims[3]) + sum(block(c) for c in dims[:3])
    n += sum(c * (c // 2) + c for c in dims[1:])                       # proj_out{s} + BN
    n += sum(9 * c * ch + 2 * ch for c in dims)                        # proj_final, conv_p{s}
    n += 36 * ch * ch + 2 * ch + ch * K + K                            # bottleneck, conv_seg
    n += 9 * dims[2] * a + 2 * a + a * K + K                           # aux head
  assert official == n


def test_extra_transform_squeeze_last():
  a = np.arange(6, dtype=np.float32).reshape(6, 1)
  b = kd.to_ours_extra("squeeze_last", a)
  assert b.shape == (6,) and np.array_equal(b, a[:, 0])
  assert kd.official_shape_extra("squeeze_last", b.shape) == (6, 1)
  np.testing.assert_array_equal(kd.to_official_extra("squeeze_last", b), a)
  with pytest.raises(ValueError, match="size 1"):
    kd.to_ours_extra("squeeze_last", np.zeros((6, 2)))
  with pytest.raises(ValueError, match="unknown extra transform"):
    kd.to_ours_extra("linear", a)


def test_dense_rows_refuses_unknown_task_and_neck():
  space = get_space("evonas", "tiny")
  with pytest.raises(ValueError, match="task"):
    kd.dense_rows("detection", space)
  with pytest.raises(ValueError, match="neck"):
    kd.dense_rows("depth", space, {"neck": "ppm"})


# ------------------------------------------------------------------------------ semantics
def _dwconv_nchw(x, w, bias=None, dilation=1, replicate=False):
  """Depthwise 3x3 correlation on x (B, C, H, W), w (C, 1, 3, 3), same size."""
  p = dilation
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="edge" if replicate else "constant")
  h, wd = x.shape[2:]
  out = np.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out += w[None, :, 0, i, j, None, None] * xp[:, :, i * p:i * p + h, j * p:j * p + wd]
  return out if bias is None else out + bias[None, :, None, None]


def _layer_norm(x, w, b, eps=1e-5):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * w + b


def _official_block_forward(sd, x):
  """The official SpatialMambaBlock forward on channels-last x (B, H, W, C), in numpy, from the
  official state-dict layout (torch Linear: y = x W^T; OIHW depthwise kernels)."""
  erf = np.vectorize(math.erf)
  g = lambda k: sd[f"blk.blocks.0.{k}"]
  silu = lambda t: t / (1 + np.exp(-t))
  nchw = lambda t: t.transpose(0, 3, 1, 2)
  nhwc = lambda t: t.transpose(0, 2, 3, 1)
  bsz, hh, ww, c = x.shape
  x = x + nhwc(_dwconv_nchw(nchw(x), g("cpe1.weight"), g("cpe1.bias")))
  t = _layer_norm(x, g("ln_1.weight"), g("ln_1.bias"))
  xz = t @ g("self_attention.in_proj.weight").T
  d = xz.shape[-1] // 2
  xs, z = xz[..., :d], xz[..., d:]
  xs = silu(_dwconv_nchw(nchw(xs), g("self_attention.conv2d.weight"),
                         g("self_attention.conv2d.bias")))            # (B, d, H, W)
  u = xs.reshape(bsz, d, hh * ww)
  dbl = np.einsum("kd,bdl->bkl", g("self_attention.x_proj_weight"), u)
  r = dbl.shape[1] - 2
  dts, bs, cs = dbl[:, :r], dbl[:, r:r + 1], dbl[:, r + 1:]
  dt = np.einsum("dr,brl->bdl", g("self_attention.dt_projs_weight"), dts)
  dt = np.logaddexp(0.0, dt + g("self_attention.dt_projs_bias")[None, :, None])
  a = -np.exp(g("self_attention.A_logs"))[None, :, 0]                 # (1, d)
  h = np.zeros((bsz, d))
  hs = np.zeros_like(u)
  for step in range(u.shape[-1]):
    h = np.exp(dt[..., step] * a) * h + dt[..., step] * bs[:, 0, step, None] * u[..., step]
    hs[..., step] = h
  hs = hs.reshape(bsz, d, hh, ww)
  al = g("self_attention.state_fusion.alpha")
  hs = sum(al[n] * _dwconv_nchw(hs, g(f"self_attention.state_fusion.{k}"), dilation=dil,
                                replicate=True)
           for n, (k, dil) in enumerate((("kernel_3", 1), ("kernel_3_1", 3), ("kernel_3_2", 5))))
  y = hs.reshape(bsz, d, -1) * cs + u * g("self_attention.Ds")[None, :, None]
  y = y.reshape(bsz, d, hh, ww).transpose(0, 2, 3, 1)
  y = _layer_norm(y, g("self_attention.out_norm.weight"), g("self_attention.out_norm.bias"))
  y = (y * silu(z)) @ g("self_attention.out_proj.weight").T
  x = x + y
  x = x + nhwc(_dwconv_nchw(nchw(x), g("cpe2.weight"), g("cpe2.bias")))
  t = _layer_norm(x, g("ln_2.weight"), g("ln_2.bias"))
  t = t @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
  t = 0.5 * t * (1 + erf(t / np.sqrt(2)))
  return x + t @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")


def test_spatial_mamba_block_rows_preserve_the_official_function():
  """Random official block weights (distinct per tensor, so a swapped pair of rows, e.g. the
  fusion dilations or the in_proj halves, changes the output) through the block rows give our
  SpatialMambaBlock the official block's function (numpy reference above)."""
  from evonas_jax.nn.heads import SpatialMambaBlock
  c, hh, ww = 20, 4, 5                       # c > 16: dt_rank 2
  shapes = _official_spatial_mamba_layer("blk", c)
  rng = np.random.default_rng(1)
  sd = {k: (0.3 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
  sd["blk.blocks.0.self_attention.A_logs"] = rng.uniform(-1, 0.5, (2 * c, 1)).astype(np.float32)
  params = {}
  for r in keymap._expand(kd._fill(kd.SPATIAL_MAMBA_BLOCK, "blk", "b")):
    node = params
    for k in r.path[1:-1]:
      node = node.setdefault(k, {})
    node[r.path[-1]] = _to_ours(r.transform, sd[r.official])
  x = rng.normal(size=(2, hh, ww, c)).astype(np.float32)
  ours = SpatialMambaBlock(4.0, "reference").apply({"params": params}, x)
  want = _official_block_forward({k: v.astype(np.float64) for k, v in sd.items()},
                                 x.astype(np.float64))
  np.testing.assert_allclose(np.asarray(ours), want, rtol=2e-4, atol=2e-4)
