"""The official-checkpoint converter (evonas_jax.convert) against independent references.

References that do not use the module under test:
* `official_shapes`: the official EvoNAS / VSSD state-dict keys and shapes, written out here from
  the official module definitions (Stem / PatchMerging ConvLayers, VMAMBA2Block, Mamba2 with
  in_proj [z | x | B | C | dt], StandardAttention, Mlp); its parameter count is checked against
  the official supernet's published total (27,411,228 for the base backbone + outnorms).
* numpy forwards of one VSSD block, one attention block and one PatchMerging, in PyTorch's NCHW
  layout, fed directly from official-layout arrays.
"""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from evonas_jax.convert import convert_lib, keymap, state_dict_io
from evonas_jax.nn import init_supernet
from evonas_jax.nn.block import Block, BlockSpec, Widths
from evonas_jax.nn.stem import PatchMerging
from evonas_jax.nn.supernet import EvoNet, supernet_spec
from evonas_jax.space import get_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ independent official layout
def official_shapes(dims, *, depths=(2, 4, 8, 4), heads=(2, 4, 8, 16), expand=4, d_state=64,
                    mlp_ratio=4.0, in_chans=3, num_classes=None):
  """{key: shape} of the official network (num_classes None: the dense backbone + outnorms).

  expand, d_state, mlp_ratio: one value, or one per stage (a standalone subnet)."""
  sd = {}
  per_stage = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * len(dims)
  expand, d_state, mlp_ratio = per_stage(expand), per_stage(d_state), per_stage(mlp_ratio)

  def conv(name, cout, cin, k, bias):
    sd[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
      sd[f"{name}.bias"] = (cout,)

  def bn(name, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
      sd[f"{name}.{s}"] = (c,)
    sd[f"{name}.num_batches_tracked"] = ()

  def ln(name, c):
    sd[f"{name}.weight"], sd[f"{name}.bias"] = (c,), (c,)

  def linear(name, cout, cin, bias):
    sd[f"{name}.weight"] = (cout, cin)
    if bias:
      sd[f"{name}.bias"] = (cout,)

  c0 = dims[0]
  for name, cout, cin, k in (("conv1", c0 // 2, in_chans, 3), ("conv2.0", c0 // 2, c0 // 2, 3),
                             ("conv2.1", c0 // 2, c0 // 2, 3), ("conv3.0", 4 * c0, c0 // 2, 3),
                             ("conv3.1", c0, 4 * c0, 1)):
    conv(f"patch_embed.{name}.conv", cout, cin, k, bias=False)
    bn(f"patch_embed.{name}.norm", cout)
  for i, dim in enumerate(dims):
    for j in range(depths[i]):
      b = f"layers.{i}.blocks.{j}"
      sd[f"{b}.cpe1.weight"], sd[f"{b}.cpe1.bias"] = (dim, 1, 3, 3), (dim,)
      ln(f"{b}.norm1", dim)
      if i < 3:   # Mamba2 (linear-attention duality), ngroups 1
        d, n = int(expand[i] * dim), d_state[i]
        linear(f"{b}.attn.in_proj", 2 * d + 2 * n + heads[i], dim, bias=False)
        conv(f"{b}.attn.conv2d", d + 2 * n, 1, 3, bias=True)
        for p in ("dt_bias", "A_log", "D"):
          sd[f"{b}.attn.{p}"] = (heads[i],)
        ln(f"{b}.attn.norm", d)
        linear(f"{b}.attn.out_proj", dim, d, bias=False)
      else:       # StandardAttention
        linear(f"{b}.attn.to_qkv", 3 * dim, dim, bias=False)
        linear(f"{b}.attn.to_out", dim, dim, bias=True)
      sd[f"{b}.cpe2.weight"], sd[f"{b}.cpe2.bias"] = (dim, 1, 3, 3), (dim,)
      ln(f"{b}.norm2", dim)
      hidden = int(dim * mlp_ratio[i])
      linear(f"{b}.mlp.fc1", hidden, dim, bias=True)
      linear(f"{b}.mlp.fc2", dim, hidden, bias=True)
    if i < 3:     # PatchMerging, ratio 4: C -> 8C (1x1) -> dw 3x3 s2 -> 2C (1x1) + BN
      ds = f"layers.{i}.downsample.conv"
      conv(f"{ds}.0.conv", 8 * dim, dim, 1, bias=True)
      conv(f"{ds}.1.conv", 8 * dim, 1, 3, bias=True)
      conv(f"{ds}.2.conv", 2 * dim, 8 * dim, 1, bias=True)
      bn(f"{ds}.2.norm", 2 * dim)
  if num_classes is None:
    for i, dim in enumerate(dims):
      ln(f"outnorm{i}", dim)
  else:
    ln("norm", dims[-1])
    linear("head", num_classes, dims[-1], bias=True)
  return sd


def n_params(shapes):
  return sum(math.prod(s) for k, s in shapes.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def random_sd(shapes, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in shapes.items():
    if k.endswith("num_batches_tracked"):
      out[k] = np.array(7, np.int64)
    elif k.endswith("running_var"):
      out[k] = rng.uniform(0.5, 2.0, s).astype(np.float32)
    else:
      out[k] = rng.normal(0, 0.3, s).astype(np.float32)
  return out


def zeros_target(space, num_classes, image_shape):
  """Our supernet's variable tree as zeros, from shapes only (no compile of an init)."""
  model = EvoNet(supernet_spec(space), num_classes)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, *image_shape)), train=False))
  return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)


# ------------------------------------------------------------------ key table
def test_official_generator_matches_published_parameter_count():
  """The independent layout reproduces the official base supernet's published total."""
  assert n_params(official_shapes((64, 128, 256, 512))) == 27_411_228


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_every_official_key_maps_and_round_trips_exactly(preset):
  space = get_space("evonas", preset)
  shapes = official_shapes(space.dims, num_classes=10)
  sd = random_sd(shapes)
  target = zeros_target(space, 10, (32, 32, 3))
  ours, rep = convert_lib.from_official(sd, space, "classification", target)
  counts = rep.counts()
  n_bn = sum(k.endswith("num_batches_tracked") for k in shapes)
  assert counts["mapped"] == len(shapes) - n_bn and counts["dropped"] == n_bn
  assert counts["unmapped"] == counts["kept_init"] == 0
  # Every leaf of our tree was written (none left at the zeros of the target).
  assert sum(np.size(a) for a in jax.tree.leaves(ours["params"])) == n_params(shapes)
  for path, a in jax.tree_util.tree_flatten_with_path(ours)[0]:
    assert np.any(a != 0), jax.tree_util.keystr(path)
  back, _ = convert_lib.to_official(ours, space, "classification")
  assert set(back) == set(sd)
  for k in sd:
    if not k.endswith("num_batches_tracked"):
      assert back[k].shape == sd[k].shape and np.array_equal(back[k], sd[k]), k
  again, _ = convert_lib.from_official(back, space, "classification", target)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(again)):
    assert np.array_equal(a, b)


def test_evonas_jax_to_official_to_evonas_jax_is_exact_and_counts_match():
  space = get_space("evonas", "tiny")
  _, v = init_supernet(space, 10, jax.random.key(3), (32, 32, 3))
  v = jax.device_get(v)
  sd, rep = convert_lib.to_official(v, space, "classification")
  shapes = official_shapes(space.dims, num_classes=10)
  assert {k: tuple(a.shape) for k, a in sd.items()} == shapes
  back, _ = convert_lib.from_official(sd, space, "classification",
                                      jax.tree.map(np.zeros_like, v))
  flat_v = jax.tree_util.tree_flatten_with_path(v)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(back)[0]
  assert [p for p, _ in flat_v] == [p for p, _ in flat_b]
  for (p, a), (_, b) in zip(flat_v, flat_b):
    assert np.array_equal(np.asarray(a), b), jax.tree_util.keystr(p)


def test_dense_backbone_layout_has_backbone_prefix_and_outnorms():
  """A task checkpoint: backbone keys under `backbone.`, outnorm{s} inside the backbone."""
  from evonas_jax.nn.dense import init_dense_model
  space = get_space("evonas", "tiny")
  _, v = init_dense_model(space, "depth", None, 0, 10.0, jax.random.key(0), (64, 64, 3))
  v = jax.device_get(v)
  sd, rep = convert_lib.to_official(v, space, "depth", allow_unmapped=True)
  want = {f"backbone.{k}": s for k, s in official_shapes(space.dims).items()}
  got = {k: tuple(a.shape) for k, a in sd.items() if k.startswith("backbone.")}
  assert got == want
  back, _ = convert_lib.from_official(sd, space, "depth", jax.tree.map(np.zeros_like, v),
                                      allow_unmapped=True)
  for k in ("backbone", "outnorm0", "outnorm3"):
    for a, b in zip(jax.tree.leaves(v["params"][k]), jax.tree.leaves(back["params"][k])):
      assert np.array_equal(np.asarray(a), b)


# ------------------------------------------------------------------ numpy forwards (NCHW)
def _np_dwconv(x, w, b, stride=1):
  """Depthwise 3x3, padding 1: x (N, C, H, W), w (C, 1, 3, 3)."""
  n, c, h, wd = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
  out = np.zeros((n, c, ho, wo), np.float64)
  for i in range(3):
    for j in range(3):
      out += xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] * w[None, :, 0, i, j,
                                                                              None, None]
  return out + (0 if b is None else b[None, :, None, None])


def _np_ln(x, w, b):   # over the last axis
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + 1e-5) * w + b


def _tokens_to_nchw(t, h, w):
  return t.reshape(t.shape[0], h, w, -1).transpose(0, 3, 1, 2)


def _nchw_to_tokens(x):
  return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _np_mamba2(u, sd, p, h, w, heads):
  """Official Mamba2 mixer, linear-attention duality, positive dA: u (N, L, C)."""
  softplus = lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0)
  silu = lambda z: z / (1 + np.exp(-z))
  d = sd[p + "norm.weight"].shape[0]
  n_state = (sd[p + "conv2d.weight"].shape[0] - d) // 2
  zxbcdt = u @ sd[p + "in_proj.weight"].T
  z, xbc = zxbcdt[..., :d], zxbcdt[..., d:2 * d + 2 * n_state]
  dt = zxbcdt[..., 2 * d + 2 * n_state:]
  dt = softplus(dt + sd[p + "dt_bias"])                                  # (N, L, nh)
  xbc = silu(_nchw_to_tokens(_np_dwconv(_tokens_to_nchw(xbc, h, w), sd[p + "conv2d.weight"],
                                        sd[p + "conv2d.bias"])))
  x, bm, cm = xbc[..., :d], xbc[..., d:d + n_state], xbc[..., d + n_state:]
  hd = d // heads
  y = np.zeros_like(x)
  a = -np.exp(sd[p + "A_log"])
  for hh in range(heads):
    v = x[..., hh * hd:(hh + 1) * hd]                                    # (N, L, hd)
    da = -(dt[..., hh] * a[hh])                                          # positive dA
    kv = np.einsum("nls,nlp->nsp", bm, v * da[..., None])
    y[..., hh * hd:(hh + 1) * hd] = np.einsum("nls,nsp->nlp", cm, kv) + v * sd[p + "D"][hh]
  y = _np_ln(y, sd[p + "norm.weight"], sd[p + "norm.bias"]) * z
  return y @ sd[p + "out_proj.weight"].T


def _np_attention(u, sd, p, heads):
  n, L, c = u.shape
  qkv = u @ sd[p + "to_qkv.weight"].T
  q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(n, L, heads, -1).transpose(0, 2, 1, 3)
             for i in range(3))
  logits = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5
  att = np.exp(logits - logits.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  return (att @ v).transpose(0, 2, 1, 3).reshape(n, L, c) @ sd[p + "to_out.weight"].T \
      + sd[p + "to_out.bias"]


def _np_block(x_nchw, sd, p, heads, mixer):
  """Official VMAMBA2Block (eval mode, no drop path): x (N, C, H, W)."""
  n, c, h, w = x_nchw.shape
  gelu = lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2)))
  x = _nchw_to_tokens(x_nchw)
  x = x + _nchw_to_tokens(_np_dwconv(x_nchw, sd[p + "cpe1.weight"], sd[p + "cpe1.bias"]))
  t = _np_ln(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
  x = x + (_np_mamba2(t, sd, p + "attn.", h, w, heads) if mixer == "vssd"
           else _np_attention(t, sd, p + "attn.", heads))
  x = x + _nchw_to_tokens(_np_dwconv(_tokens_to_nchw(x, h, w), sd[p + "cpe2.weight"],
                                     sd[p + "cpe2.bias"]))
  t = _np_ln(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
  hid = gelu(t @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
  return _tokens_to_nchw(x + hid @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"], h, w)


def _np_patch_merging(x, sd, p):
  """Official PatchMerging (eval-mode BatchNorm): x (N, C, H, W)."""
  relu = lambda z: np.maximum(z, 0)
  conv1 = lambda z, k: np.einsum("nchw,oc->nohw", z, sd[k + ".weight"][:, :, 0, 0]) \
      + sd[k + ".bias"][None, :, None, None]
  y = relu(conv1(x, p + "conv.0.conv"))
  y = relu(_np_dwconv(y, sd[p + "conv.1.conv.weight"], sd[p + "conv.1.conv.bias"], stride=2))
  y = conv1(y, p + "conv.2.conv")
  bnp = p + "conv.2.norm."
  sh = lambda a: a[None, :, None, None]
  return (y - sh(sd[bnp + "running_mean"])) / np.sqrt(sh(sd[bnp + "running_var"]) + 1e-5) \
      * sh(sd[bnp + "weight"]) + sh(sd[bnp + "bias"])


def _leaf(tree, path):
  for p in path:
    tree = tree[p]
  return tree


@pytest.fixture(scope="module")
def tiny_converted():
  space = get_space("evonas", "tiny")
  shapes = official_shapes(space.dims, num_classes=10)
  sd = random_sd(shapes, seed=1)
  sd = {k: (v * 0.5 if v.dtype == np.float32 else v) for k, v in sd.items()}
  ours, _ = convert_lib.from_official(sd, space, "classification",
                                      zeros_target(space, 10, (32, 32, 3)))
  return space, sd, ours


@pytest.mark.parametrize("stage,mixer", [(1, "vssd"), (3, "attention")])
def test_converted_block_equals_numpy_official_block(tiny_converted, stage, mixer):
  space, sd, ours = tiny_converted
  c, heads = space.dims[stage], space.heads[stage]
  hw = (6, 5)
  x = np.random.default_rng(2).normal(size=(2, c, *hw)).astype(np.float32)
  want = _np_block(x.astype(np.float64), {k: v.astype(np.float64) for k, v in sd.items()},
                   f"layers.{stage}.blocks.1.", heads, mixer)
  full = supernet_spec(space).stages[stage][1]
  spec = BlockSpec(1, (mixer,), full.hidden, full.widths)
  got = Block(spec).apply({"params": ours["params"][f"stage{stage}_block1"]},
                          jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=2e-4, atol=2e-4)


def test_converted_patch_merging_equals_numpy_official(tiny_converted):
  space, sd, ours = tiny_converted
  c = space.dims[1]
  x = np.random.default_rng(3).normal(size=(2, c, 7, 6)).astype(np.float32)
  want = _np_patch_merging(x.astype(np.float64), {k: v.astype(np.float64) for k, v in sd.items()},
                           "layers.1.downsample.")
  got = PatchMerging(space.dims[2]).apply(
      {"params": ours["params"]["downsample2"], "batch_stats": ours["batch_stats"]["downsample2"]},
      jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------ remap (VSSD-T -> supernet)
@pytest.fixture(scope="module")
def remapped():
  space = get_space("evonas", "tiny")
  src = random_sd(official_shapes(space.dims, expand=2, d_state=64, num_classes=10), seed=4)
  src = {k: (v * 0.5 if v.dtype == np.float32 else v) for k, v in src.items()}
  _, init = init_supernet(space, 10, jax.random.key(5), (32, 32, 3))
  init = jax.device_get(init)
  out = {pad: convert_lib.from_official(src, space, "classification", init, remap=True, pad=pad)
         for pad in ("init", "zero")}
  return space, src, init, out


def test_remap_pads_in_proj_conv_norm_and_out_proj_segment_wise(remapped):
  space, src, init, out = remapped
  c = space.dims[0]
  d, n, nh = 2 * c, 64, space.heads[0]
  D, N = 4 * c, 64
  k = "layers.0.blocks.1.attn."
  for pad in ("init", "zero"):
    p = out[pad][0]["params"]["stage0_block1"]["mixer_vssd"]
    i0 = init["params"]["stage0_block1"]["mixer_vssd"]
    fill = (lambda a: a) if pad == "init" else np.zeros_like
    w = src[k + "in_proj.weight"].T          # (C, 2d + 2n + nh), [z | x | B | C | dt]
    kern = p["in_proj"]["kernel"]
    ik = np.asarray(i0["in_proj"]["kernel"])
    # Segment starts in the source and in the supernet.
    for (s0, d0, width, full) in ((0, 0, d, D), (d, D, d, D), (2 * d, 2 * D, n, N),
                                  (2 * d + n, 2 * D + N, n, N), (2 * d + 2 * n, 2 * D + 2 * N,
                                                                 nh, nh)):
      np.testing.assert_array_equal(kern[:, d0:d0 + width], w[:, s0:s0 + width])
      np.testing.assert_array_equal(kern[:, d0 + width:d0 + full],
                                    fill(ik[:, d0 + width:d0 + full]))
    np.testing.assert_array_equal(p["out_proj"]["kernel"][:d], src[k + "out_proj.weight"].T)
    np.testing.assert_array_equal(p["out_proj"]["kernel"][d:],
                                  fill(np.asarray(i0["out_proj"]["kernel"])[d:]))
    np.testing.assert_array_equal(p["norm"]["scale"][:d], src[k + "norm.weight"])
    cb = p["conv"]["bias"]
    np.testing.assert_array_equal(cb[:d], src[k + "conv2d.bias"][:d])
    np.testing.assert_array_equal(cb[D:D + n], src[k + "conv2d.bias"][d:d + n])
    np.testing.assert_array_equal(cb[D + N:D + N + n], src[k + "conv2d.bias"][d + n:])
  rep = out["init"][1]
  notes = {e["key"]: e.get("note", "") for e in rep.entries}
  # Per VSSD block: in_proj, conv weight and bias, norm weight and bias, out_proj (MLP 4 = 4).
  assert rep.counts()["remapped"] == 6 * sum(space.max_depths[:3])
  assert "padded segment-wise" in notes[k + "in_proj.weight"]


def test_remapped_expand2_subnet_is_the_source_network(remapped):
  """The supernet's expand-2 blocks (masked and sliced) compute the numpy VSSD-T block."""
  from evonas_jax.space.masks import arch_masks
  space, src, _, out = remapped
  c, heads = space.dims[0], space.heads[0]
  x = np.random.default_rng(6).normal(size=(2, c, 6, 6)).astype(np.float32)
  sd64 = {k: v.astype(np.float64) for k, v in src.items()}
  want = _np_block(x.astype(np.float64), sd64, "layers.0.blocks.1.", heads, "vssd")
  full = supernet_spec(space).stages[0][1]
  for pad in ("init", "zero"):
    params = out[pad][0]["params"]["stage0_block1"]
    # Masked: the supernet block with the expand-2 / d_state-64 / MLP-4 mask.
    mask = {"inner": (jnp.arange(full.widths.d_inner) < 2 * c).astype(jnp.float32),
            "state": jnp.ones((full.widths.d_state,)), "mlp": jnp.ones((full.hidden,)),
            "depth": jnp.ones((space.max_depths[0],)), "type": jnp.int32(0)}
    got = Block(full).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), mask)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=2e-4,
                               atol=2e-4)
    # Sliced: the standalone expand-2 block.
    from evonas_jax.nn.vssd import VSSDMixer
    sub = Widths(c, heads, 2 * c, 64)
    sliced = dict(params, mixer_vssd=VSSDMixer.slice_params(params["mixer_vssd"], full.widths,
                                                            sub))
    got = Block(BlockSpec(1, ("vssd",), full.hidden, sub)).apply(
        {"params": sliced}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=2e-4,
                               atol=2e-4)


def test_remap_sums_rgb_stem_for_grey_targets_and_refuses_other_presets():
  space = get_space("evonas", "tiny")
  src = random_sd(official_shapes(space.dims, num_classes=10), seed=7)
  grey = zeros_target(space, 10, (32, 32, 1))
  with pytest.raises(ValueError, match="patch_embed.conv1.conv.weight"):
    convert_lib.from_official(src, space, "classification", grey)
  ours, rep = convert_lib.from_official(src, space, "classification", grey, remap=True)
  np.testing.assert_array_equal(
      ours["params"]["stem"]["conv1"]["kernel"][:, :, 0, :],
      src["patch_embed.conv1.conv.weight"].sum(axis=1).transpose(1, 2, 0))
  small = get_space("evonas", "small")
  with pytest.raises(ValueError, match="not elastic"):
    convert_lib.from_official(src, small, "classification", zeros_target(small, 10, (32, 32, 3)),
                              remap=True)


# ------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def tiny_sd():
  space = get_space("evonas", "tiny")
  return space, random_sd(official_shapes(space.dims, num_classes=10), seed=8), \
      zeros_target(space, 10, (32, 32, 3))


def test_bad_inputs_fail_naming_the_key(tiny_sd):
  space, sd, target = tiny_sd
  bad = dict(sd)
  bad["layers.2.blocks.3.mlp.fc1.weight"] = np.zeros((5, 64), np.float32)
  with pytest.raises(ValueError, match=r"layers\.2\.blocks\.3\.mlp\.fc1\.weight"):
    convert_lib.from_official(bad, space, "classification", target)
  missing = {k: v for k, v in sd.items() if k != "layers.1.downsample.conv.2.conv.bias"}
  with pytest.raises(ValueError, match=r"layers\.1\.downsample\.conv\.2\.conv\.bias"):
    convert_lib.from_official(missing, space, "classification", target)
  extra = dict(sd, **{"decoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"decoder\.extra\.weight"):
    convert_lib.from_official(extra, space, "classification", target)
  _, rep = convert_lib.from_official(extra, space, "classification", target, allow_unmapped=True)
  assert [e["key"] for e in rep.entries if e["status"] == "unmapped"] == ["decoder.extra.weight"]
  resnet = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
            "layer1.0.bn1.weight": np.zeros(64, np.float32)}
  with pytest.raises(ValueError, match="patch_embed"):
    convert_lib.from_official(resnet, space, "classification", target)
  # Prefixes of DDP / task models are stripped; skipped keys keep the target's values.
  wrapped = {f"module.{k}": v for k, v in sd.items()}
  ours, rep = convert_lib.from_official(wrapped, space, "classification", target,
                                        skip=[r"^head\."])
  assert np.all(ours["params"]["head"]["kernel"] == 0)
  assert sum(e["status"] == "skipped" for e in rep.entries) == 2


def test_state_dict_files_and_errors(tmp_path, tiny_sd):
  _, sd, _ = tiny_sd
  for ext in (".safetensors", ".npz"):
    p = str(tmp_path / f"w{ext}")
    state_dict_io.write_state_dict(p, sd)
    back = state_dict_io.read_state_dict(p)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    with pytest.raises(FileExistsError, match="refusing"):
      state_dict_io.write_state_dict(p, sd)
  trunc = tmp_path / "t.safetensors"
  trunc.write_bytes((tmp_path / "w.safetensors").read_bytes()[:1000])
  with pytest.raises(ValueError, match="t.safetensors"):
    state_dict_io.read_state_dict(str(trunc))
  (tmp_path / "w.ckpt").write_bytes(b"x")
  with pytest.raises(ValueError, match="allowed extensions"):
    state_dict_io.read_state_dict(str(tmp_path / "w.ckpt"))
  assert state_dict_io.unwrap({"model": {"a": np.zeros(1)}, "epoch": 3}) == {"a": np.zeros(1)}


def _digits_config(tmp_path, steps):
  from helpers import load_config, use_digits
  c = use_digits(load_config("quickstart"), tmp_path)
  c.batch_size, c.eval_batch_size, c.num_steps = 32, 200, steps
  c.log_every = c.eval_every = c.checkpoint_every = steps
  c.bn_calibration_batches = 1
  c.teacher.source = "none"
  c.distill.alpha_spatial = c.distill.alpha_frequency = 0.0
  c.pst.stages = ("maxnet",)
  return c


def test_convert_then_train_starts_from_the_converted_weights(tmp_path):
  """import_official for the digits network, then one training step with init_from: the
  trained supernet starts from the converted weights (|step| <= lr (1 + wd |w|) for AdamW's
  first step, whose update is lr * g / (|g| + eps) plus the decoupled decay)."""
  from evonas_jax.checkpoint import load_pytree
  from evonas_jax.convert import pipeline
  from evonas_jax.trainer import train_and_evaluate
  space = get_space("evonas", "tiny")
  sd = random_sd(official_shapes(space.dims, in_chans=1, num_classes=10), seed=9)
  sd = {k: (v * 0.3 if v.dtype == np.float32 and "running" not in k else v)
        for k, v in sd.items()}
  src = str(tmp_path / "official.safetensors")
  state_dict_io.write_state_dict(src, sd)
  out = str(tmp_path / "converted")
  cfg = _digits_config(tmp_path, 1)
  report = pipeline.import_official(src, out, cfg, log=lambda *a: None)
  assert report["counts"]["unmapped"] == report["counts"]["kept_init"] == 0
  assert json.load(open(os.path.join(out, "convert_report.json")))["counts"] == report["counts"]
  conv = load_pytree(out)
  np.testing.assert_array_equal(conv["params"]["head"]["kernel"], sd["head.weight"].T)
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    pipeline.import_official(src, out, cfg, log=lambda *a: None)
  cfg.init_from = out
  wd = str(tmp_path / "run")
  train_and_evaluate(cfg, wd)
  final = load_pytree(wd)
  lr, wd_ = float(cfg.optimizer.lr), float(cfg.optimizer.weight_decay)
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(conv["params"])[0],
                       jax.tree.leaves(final["params"])):
    bound = lr * (1 + wd_ * np.abs(a)) + 1e-6
    assert np.all(np.abs(np.asarray(b) - a) <= bound), jax.tree_util.keystr(p)
  # And back: the trained supernet, and one subnet in the official standalone layout (blocks
  # renumbered 0..n-1 per stage, widths sliced), with exactly the official shapes.
  rep = pipeline.export_official(wd, str(tmp_path / "supernet.safetensors"), log=lambda *a: None)
  assert rep["counts"]["mapped"] > 400 and rep["counts"]["unmapped"] == 0
  back = state_dict_io.read_state_dict(str(tmp_path / "supernet.safetensors"))
  assert {k: tuple(a.shape) for k, a in back.items()} == \
      official_shapes(space.dims, in_chans=1, num_classes=10)
  depth = ((0, 1), (1, 0, 1, 0), (0, 0, 1, 0, 0, 0, 0, 1), (1, 0, 0, 0))
  genome = [2, 1, 1, 3, 0, 4, 1, 2, 2, 5] + [b for stage in depth for b in stage]
  arch = space.decode(np.asarray(genome))
  sub = str(tmp_path / "subnet.npz")
  pipeline.export_official(wd, sub, select=",".join(map(str, genome)), log=lambda *a: None)
  got = {k: tuple(a.shape) for k, a in state_dict_io.read_state_dict(sub).items()}
  assert got == official_shapes(space.dims, depths=arch.depth_counts, in_chans=1, num_classes=10,
                                expand=arch.expand, d_state=arch.d_state,
                                mlp_ratio=arch.mlp_ratio)
  sub_sd = state_dict_io.read_state_dict(sub)
  # Block 1 of stage 0 is the standalone's block 0; its MLP is the supernet's leading slice.
  hidden = int(space.dims[0] * arch.mlp_ratio[0])
  np.testing.assert_array_equal(sub_sd["layers.0.blocks.0.mlp.fc1.weight"],
                                back["layers.0.blocks.1.mlp.fc1.weight"][:hidden])


def test_cli_errors_are_clear(tmp_path):
  """The CLI: a non-empty --to and a missing --config end with a message, no traceback."""
  src = str(tmp_path / "w.npz")
  np.savez(src, a=np.zeros(3))
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "mine.txt").write_text("user data")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cfg = os.path.join(ROOT, "configs", "quickstart.py")
  for args, msg in ((["--to", str(tmp_path / "out"), "--config", cfg], "refusing to overwrite"),
                    (["--to", str(tmp_path / "new")], "--config is required")):
    r = subprocess.run([sys.executable, "-m", "evonas_jax.convert", "--from", src] + args,
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
  assert (tmp_path / "out" / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize("task", ["depth", "segmentation"])
def test_official_task_checkpoint_converts_completely_at_base(task):
  """A whole official task checkpoint (prefixed backbone + outnorms + decoder, base preset):
  every key maps, nothing of ours is left unfilled, and it converts back to the same dict."""
  from test_convert_dense import K, official_depth, official_seg
  from evonas_jax.nn.dense import init_dense_model
  space = get_space("evonas", "base")
  prefix = convert_lib.BACKBONE_PREFIX[task]
  shapes = {prefix + k: s for k, s in official_shapes(space.dims).items()}
  shapes.update(official_depth(space.dims) if task == "depth" else official_seg(space.dims))
  sd = random_sd(shapes, seed=11)
  num_classes = 0 if task == "depth" else K
  abstract = jax.eval_shape(lambda: init_dense_model(space, task, None, num_classes, 10.0,
                                                     jax.random.key(0), (64, 64, 3))[1])
  target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  ours, rep = convert_lib.from_official(sd, space, task, target)
  c = rep.counts()
  assert c["unmapped"] == c["kept_init"] == c["skipped"] == 0
  assert c["mapped"] + c["dropped"] == len(sd)
  for path, a in jax.tree_util.tree_flatten_with_path(ours)[0]:
    assert np.any(a != 0), jax.tree_util.keystr(path)
  back, _ = convert_lib.to_official(ours, space, task)
  assert set(back) == set(sd)
  for k in sd:
    if not k.endswith("num_batches_tracked"):
      assert np.array_equal(back[k], sd[k]), k
