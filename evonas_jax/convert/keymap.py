"""The official EvoNAS / VSSD PyTorch key names <-> evonas_jax variable paths, as one table.

Every rule is a row (official key, evonas_jax path, transform). Keys and paths are templates over
`{s}` (our stage), `{p}` (the official layer that holds the downsample into stage s: p = s - 1)
and `{i}` (block index inside its stage, the supernet position). A path is
"<module>/<...>/<leaf>" inside the variables; `table()` expands the templates for one network
into concrete rows, with the collection ("params" or "batch_stats") resolved.

The official layout, for reference (names and shapes of the official EvoNAS supernet and VSSD):

* Stem `patch_embed`: conv1 (ConvLayer: `.conv` + `.norm` BatchNorm), conv2.{0,1}, conv3.{0,1};
  no conv biases.
* Stage s = `layers.{s}`: `blocks.{i}` (cpe1, norm1, attn, cpe2, norm2, mlp.fc1/fc2) and, for
  s < 3, `downsample` (PatchMerging: conv.0 1x1 + bias, conv.1 depthwise 3x3 stride 2 + bias,
  conv.2 1x1 + bias + BatchNorm). Ours puts that downsample in front of stage s + 1.
* VSSD mixer `attn`: in_proj (rows [z | x | B | C | dt], no bias), conv2d (depthwise over
  [x | B | C], bias), dt_bias, A_log, D (per head), norm (LayerNorm over d_inner), out_proj.
* Attention mixer `attn`: to_qkv (no bias, rows [q | k | v]), to_out (bias).
* Classifier: `norm`, `head`. Dense backbones: `outnorm{s}` instead (and their task checkpoints
  prefix the backbone with `backbone.`).

Transforms (official array -> ours): "linear" (out, in) -> (in, out); "conv" OIHW -> HWIO
(depthwise (C, 1, 3, 3) -> (3, 3, 1, C)); "copy". Module rules "ln" and "bn" expand into their
leaves: LayerNorm weight/bias -> scale/bias; BatchNorm weight/bias -> params scale/bias,
running_mean/running_var -> batch_stats mean/var, num_batches_tracked dropped (flax keeps no
step count).
"""
from __future__ import annotations

import dataclasses

import numpy as np

# ------------------------------------------------------------------------------ the table
STEM = (
    ("patch_embed.conv1.conv.weight", "stem/conv1/kernel", "conv"),
    ("patch_embed.conv1.norm", "stem/bn1", "bn"),
    ("patch_embed.conv2.0.conv.weight", "stem/conv_r1/kernel", "conv"),
    ("patch_embed.conv2.0.norm", "stem/bn_r1", "bn"),
    ("patch_embed.conv2.1.conv.weight", "stem/conv_r2/kernel", "conv"),
    ("patch_embed.conv2.1.norm", "stem/bn_r2", "bn"),
    ("patch_embed.conv3.0.conv.weight", "stem/conv3/kernel", "conv"),
    ("patch_embed.conv3.0.norm", "stem/bn3", "bn"),
    ("patch_embed.conv3.1.conv.weight", "stem/conv4/kernel", "conv"),
    ("patch_embed.conv3.1.norm", "stem/bn4", "bn"),
)

DOWNSAMPLE = (   # official layers.{p}.downsample == ours downsample{s}, p = s - 1
    ("layers.{p}.downsample.conv.0.conv.weight", "downsample{s}/expand/kernel", "conv"),
    ("layers.{p}.downsample.conv.0.conv.bias", "downsample{s}/expand/bias", "copy"),
    ("layers.{p}.downsample.conv.1.conv.weight", "downsample{s}/dw/kernel", "conv"),
    ("layers.{p}.downsample.conv.1.conv.bias", "downsample{s}/dw/bias", "copy"),
    ("layers.{p}.downsample.conv.2.conv.weight", "downsample{s}/project/kernel", "conv"),
    ("layers.{p}.downsample.conv.2.conv.bias", "downsample{s}/project/bias", "copy"),
    ("layers.{p}.downsample.conv.2.norm", "downsample{s}/bn", "bn"),
)

BLOCK = (
    ("layers.{s}.blocks.{i}.cpe1.weight", "stage{s}_block{i}/cpe1/kernel", "conv"),
    ("layers.{s}.blocks.{i}.cpe1.bias", "stage{s}_block{i}/cpe1/bias", "copy"),
    ("layers.{s}.blocks.{i}.norm1", "stage{s}_block{i}/norm1", "ln"),
    ("layers.{s}.blocks.{i}.cpe2.weight", "stage{s}_block{i}/cpe2/kernel", "conv"),
    ("layers.{s}.blocks.{i}.cpe2.bias", "stage{s}_block{i}/cpe2/bias", "copy"),
    ("layers.{s}.blocks.{i}.norm2", "stage{s}_block{i}/norm2", "ln"),
    ("layers.{s}.blocks.{i}.mlp.fc1.weight", "stage{s}_block{i}/mlp/fc1/kernel", "linear"),
    ("layers.{s}.blocks.{i}.mlp.fc1.bias", "stage{s}_block{i}/mlp/fc1/bias", "copy"),
    ("layers.{s}.blocks.{i}.mlp.fc2.weight", "stage{s}_block{i}/mlp/fc2/kernel", "linear"),
    ("layers.{s}.blocks.{i}.mlp.fc2.bias", "stage{s}_block{i}/mlp/fc2/bias", "copy"),
)

MIXERS = {   # the official stage types: "mamba2" (our "vssd") and "standard" (our "attention")
    "vssd": (
        ("layers.{s}.blocks.{i}.attn.in_proj.weight", "stage{s}_block{i}/mixer_vssd/in_proj/kernel",
         "linear"),
        ("layers.{s}.blocks.{i}.attn.conv2d.weight", "stage{s}_block{i}/mixer_vssd/conv/kernel",
         "conv"),
        ("layers.{s}.blocks.{i}.attn.conv2d.bias", "stage{s}_block{i}/mixer_vssd/conv/bias",
         "copy"),
        ("layers.{s}.blocks.{i}.attn.dt_bias", "stage{s}_block{i}/mixer_vssd/dt_bias", "copy"),
        ("layers.{s}.blocks.{i}.attn.A_log", "stage{s}_block{i}/mixer_vssd/A_log", "copy"),
        ("layers.{s}.blocks.{i}.attn.D", "stage{s}_block{i}/mixer_vssd/D", "copy"),
        ("layers.{s}.blocks.{i}.attn.norm", "stage{s}_block{i}/mixer_vssd/norm", "ln"),
        ("layers.{s}.blocks.{i}.attn.out_proj.weight",
         "stage{s}_block{i}/mixer_vssd/out_proj/kernel", "linear"),
    ),
    "attention": (
        ("layers.{s}.blocks.{i}.attn.to_qkv.weight",
         "stage{s}_block{i}/mixer_attention/qkv/kernel", "linear"),
        ("layers.{s}.blocks.{i}.attn.to_out.weight",
         "stage{s}_block{i}/mixer_attention/proj/kernel", "linear"),
        ("layers.{s}.blocks.{i}.attn.to_out.bias", "stage{s}_block{i}/mixer_attention/proj/bias",
         "copy"),
    ),
}

CLASSIFIER = (
    ("norm", "norm", "ln"),
    ("head.weight", "head/kernel", "linear"),
    ("head.bias", "head/bias", "copy"),
)

OUTNORM = (("outnorm{s}", "outnorm{s}", "ln"),)   # dense backbones; ours sits beside `backbone`

# Keys the official checkpoints hold that carry no weights here.
DROPPED_SUFFIXES = (".num_batches_tracked",)

_MODULE_LEAVES = {
    "ln": (("weight", "params", "scale"), ("bias", "params", "bias")),
    "bn": (("weight", "params", "scale"), ("bias", "params", "bias"),
           ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")),
}


# ------------------------------------------------------------------------------ expansion
@dataclasses.dataclass(frozen=True)
class Row:
  """One concrete official key <-> one evonas_jax leaf.

  official: the PyTorch state-dict key (without any `module.` / `backbone.` prefix).
  collection: "params" or "batch_stats"; path: the leaf's key path inside that collection.
  transform: "linear", "conv" or "copy" (see the module docstring).
  """
  official: str
  collection: str
  path: tuple[str, ...]
  transform: str


def _expand(rules, prefix: tuple[str, ...] = (), **fmt) -> list[Row]:
  rows = []
  for key, path, kind in rules:
    key, path = key.format(**fmt), tuple(path.format(**fmt).split("/"))
    if kind in _MODULE_LEAVES:
      for suffix, coll, leaf in _MODULE_LEAVES[kind]:
        rows.append(Row(f"{key}.{suffix}", coll, prefix + path + (leaf,), "copy"))
    else:
      rows.append(Row(key, "params", prefix + path, kind))
  return rows


def backbone_rows(space, blocks_per_stage=None, prefix: tuple[str, ...] = ()) -> list[Row]:
  """Rows of the EvoNet backbone of `space` (stem, downsamples, blocks of the official types).

  blocks_per_stage: the block indices present per stage (default: every supernet position,
    range(max_depths[s])); a sliced subnet passes its active blocks.
  prefix: where the backbone sits in our tree (("backbone",) inside a DenseEvoNet).
  """
  blocks_per_stage = blocks_per_stage or [range(d) for d in space.max_depths]
  rows = _expand(STEM, prefix)
  for s in range(space.num_stages):
    if s > 0:
      rows += _expand(DOWNSAMPLE, prefix, s=s, p=s - 1)
    t = space.default_types[s]
    if t not in MIXERS:
      raise ValueError(f"stage {s + 1} has block type {t!r}, which the official network does "
                       f"not have (official types: {sorted(MIXERS)})")
    for i in blocks_per_stage[s]:
      rows += _expand(BLOCK, prefix, s=s, i=i) + _expand(MIXERS[t], prefix, s=s, i=i)
  return rows


def table(space, task: str = "classification", blocks_per_stage=None) -> list[Row]:
  """Every row of one network: the backbone and, for classification, `norm` + `head`; for the
  dense tasks the backbone under "backbone" plus the four `outnorm{s}`.

  Decoders and CA-DDKD projectors are not in the table (see the converter's report).
  """
  if task == "classification":
    return backbone_rows(space, blocks_per_stage) + _expand(CLASSIFIER)
  rows = backbone_rows(space, blocks_per_stage, prefix=("backbone",))
  for s in range(space.num_stages):
    rows += _expand(OUTNORM, s=s)
  return rows


# Axis permutations (ours <- official, official <- ours) of the transforms that move axes.
_PERMS = {"linear": ((1, 0), (1, 0)), "conv": ((2, 3, 1, 0), (3, 2, 0, 1))}


def to_ours(kind: str, a: np.ndarray) -> np.ndarray:
  """Official array -> our layout."""
  return np.ascontiguousarray(a.transpose(_PERMS[kind][0])) if kind in _PERMS else a


def to_official(kind: str, a: np.ndarray) -> np.ndarray:
  """Our array -> the official layout (inverse of `to_ours`)."""
  return np.ascontiguousarray(a.transpose(_PERMS[kind][1])) if kind in _PERMS else a


def official_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The official shape of an array whose shape is `ours` in our layout."""
  return tuple(ours[i] for i in _PERMS[kind][1]) if kind in _PERMS else tuple(ours)
