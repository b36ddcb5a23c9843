"""The official EvoNAS dense decoders (PyTorch key names) <-> evonas_jax decoder variable paths.

Same row format as `evonas_jax.convert.keymap`: (official key, our path, transform), with the
module rules "ln" / "bn" expanded by `keymap._expand`. The rules here are concrete (every stage
and StripPooling index is written out when this module is imported), so `_expand` has nothing
left to format; `dense_rows(task, space)` expands them into `keymap.Row`s.

Official layouts (read for names and shapes only):

* Depth, `MambaDepthNAS/networks/model.py` class MambaDepth, keys at the top level of its state
  dict (the backbone is under `backbone.`):
  - `PPM.{0,1}`: two StripPooling(C3, (20, 12)) (neck "sp"; `nn.Identity` for neck "none": no keys).
  - `spa_mab{s}` (s = 3..0): SpatialMambaLayer(dim=C_s, depth=1, d_state=1, mlp_ratio=4):
    one block `spa_mab{s}.blocks.0`.
  - `proj_out{s}` (s = 3..1): Conv2d(C_s, 2 C_s, 3, padding 1, bias) before PixelShuffle(2).
  - `proj_final`: Conv2d(C0, 64, 3, padding 1, bias) (final_dims = 64, a constant).
  - `disp_head1.conv1`: Conv2d(64, 1, 3, padding 1, bias).
* Segmentation, `SegmentNAS/networks/model.py` class UPerHead_with_mamba (mmseg decode head) and
  the config's FCNHead auxiliary head; keys of the mmseg EncoderDecoder state dict, so with the
  `decode_head.` / `auxiliary_head.` prefixes (its backbone is `backbone.backbone.`):
  - `decode_head.PPM.{0,1}`: StripPooling(C3, (20, 12)).
  - `decode_head.proj_out{s}` (s = 3..1): ConvModule 1x1 C_s -> C_s // 2 (conv no bias, `bn`, ReLU).
  - `decode_head.spa_mab{s}` (s = 2..0): SpatialMambaLayer(C_s, depth 1, d_state 1).
  - `decode_head.proj_final`: ConvModule 3x3 C0 -> channels (+bn, ReLU).
  - `decode_head.conv_p{s}` (s = 1..3): ConvModule 3x3 C_s -> channels (+bn, ReLU).
  - `decode_head.fpn_bottleneck`: ConvModule 3x3 4 channels -> channels (+bn, ReLU).
  - `decode_head.conv_seg`: Conv2d(channels, K, 1) with bias.
  - `auxiliary_head.convs.0`: ConvModule 3x3 C2 -> 256 (+bn, ReLU); `auxiliary_head.conv_seg`:
    Conv2d(256, K, 1) with bias (mmseg FCNHead, num_convs=1, concat_input=False).

A SpatialMambaLayer block (prefix `<m>.blocks.0`): cpe1 (depthwise 3x3 + bias), ln_1, the SSM
`self_attention` (in_proj (2d, C) no bias with rows [x | z]; conv2d depthwise (d, 1, 3, 3) + bias;
x_proj_weight (R + 2, d) rows [dt | B | C]; dt_projs_weight (d, R); dt_projs_bias (d,);
A_logs (d, 1); Ds (d,); state_fusion.kernel_3 / kernel_3_1 / kernel_3_2 (d, 1, 3, 3) for the
dilations 1 / 3 / 5 and alpha (3,); out_norm (LayerNorm d); out_proj (C, d) no bias), cpe2, ln_2,
mlp.fc1 / fc2 (with bias); d = 2 C, R = ceil(C / 16). Every LayerNorm has eps 1e-5 (the layer
passes nn.LayerNorm to its blocks), as ours.

StripPooling (prefix `<m>`): conv1_1, conv1_2, conv2_0 .. conv2_6, conv3, each an nn.Sequential
of a bias-free Conv2d (`.0`) and a BatchNorm2d (`.1`) [+ ReLU]; conv2_3 is (1, 3), conv2_4 (3, 1).

Transforms beyond keymap's four: "squeeze_last" (official (..., 1) -> ours (...): the SSM's
A_logs (d_inner, d_state = 1) -> our A_log (d_inner,)). See `to_ours_extra`.
"""
from __future__ import annotations

import numpy as np

from evonas_jax.convert import keymap

# ------------------------------------------------------------------------------ sub-templates
# {m}: the official module prefix, {o}: our module path.
SPATIAL_MAMBA_BLOCK = (
    ("{m}.blocks.0.cpe1.weight", "{o}/cpe1/kernel", "conv"),
    ("{m}.blocks.0.cpe1.bias", "{o}/cpe1/bias", "copy"),
    ("{m}.blocks.0.ln_1", "{o}/norm1", "ln"),
    ("{m}.blocks.0.self_attention.in_proj.weight", "{o}/ssm/in_proj/kernel", "linear"),
    ("{m}.blocks.0.self_attention.conv2d.weight", "{o}/ssm/conv/kernel", "conv"),
    ("{m}.blocks.0.self_attention.conv2d.bias", "{o}/ssm/conv/bias", "copy"),
    ("{m}.blocks.0.self_attention.x_proj_weight", "{o}/ssm/x_proj/kernel", "linear"),
    ("{m}.blocks.0.self_attention.dt_projs_weight", "{o}/ssm/dt_proj/kernel", "linear"),
    ("{m}.blocks.0.self_attention.dt_projs_bias", "{o}/ssm/dt_bias", "copy"),
    ("{m}.blocks.0.self_attention.A_logs", "{o}/ssm/A_log", "squeeze_last"),
    ("{m}.blocks.0.self_attention.Ds", "{o}/ssm/D", "copy"),
    ("{m}.blocks.0.self_attention.state_fusion.kernel_3", "{o}/ssm/fusion/kernel_d1", "conv"),
    ("{m}.blocks.0.self_attention.state_fusion.kernel_3_1", "{o}/ssm/fusion/kernel_d3", "conv"),
    ("{m}.blocks.0.self_attention.state_fusion.kernel_3_2", "{o}/ssm/fusion/kernel_d5", "conv"),
    ("{m}.blocks.0.self_attention.state_fusion.alpha", "{o}/ssm/fusion/alpha", "copy"),
    ("{m}.blocks.0.self_attention.out_norm", "{o}/ssm/out_norm", "ln"),
    ("{m}.blocks.0.self_attention.out_proj.weight", "{o}/ssm/out_proj/kernel", "linear"),
    ("{m}.blocks.0.cpe2.weight", "{o}/cpe2/kernel", "conv"),
    ("{m}.blocks.0.cpe2.bias", "{o}/cpe2/bias", "copy"),
    ("{m}.blocks.0.ln_2", "{o}/norm2", "ln"),
    ("{m}.blocks.0.mlp.fc1.weight", "{o}/mlp/fc1/kernel", "linear"),
    ("{m}.blocks.0.mlp.fc1.bias", "{o}/mlp/fc1/bias", "copy"),
    ("{m}.blocks.0.mlp.fc2.weight", "{o}/mlp/fc2/kernel", "linear"),
    ("{m}.blocks.0.mlp.fc2.bias", "{o}/mlp/fc2/bias", "copy"),
)

STRIP_POOLING_CONVS = ("conv1_1", "conv1_2", "conv2_0", "conv2_1", "conv2_2", "conv2_3",
                       "conv2_4", "conv2_5", "conv2_6", "conv3")
STRIP_POOLING = tuple(rule for c in STRIP_POOLING_CONVS for rule in (
    (f"{{m}}.{c}.0.weight", f"{{o}}/{c}/conv/kernel", "conv"),
    (f"{{m}}.{c}.1", f"{{o}}/{c}/bn", "bn"),
))

CONV_MODULE = (   # mmcv ConvModule with a norm: conv without bias + `bn` [+ act]
    ("{m}.conv.weight", "{o}/conv/kernel", "conv"),
    ("{m}.bn", "{o}/bn", "bn"),
)

CONV_BIAS = (
    ("{m}.weight", "{o}/kernel", "conv"),
    ("{m}.bias", "{o}/bias", "copy"),
)


def _fill(rules, m: str, o: str):
  return tuple((k.format(m=m, o=o), p.format(m=m, o=o), t) for k, p, t in rules)


def _neck(m: str, o: str):
  return sum((_fill(STRIP_POOLING, f"{m}.{j}", f"{o}/sp{j}") for j in range(2)), ())


# ------------------------------------------------------------------------------ the tables
DEPTH_NECK = _neck("PPM", "decoder/neck")   # only with neck "sp" (ours and theirs)

DEPTH_DECODER = (
    DEPTH_NECK
    + sum((_fill(SPATIAL_MAMBA_BLOCK, f"spa_mab{s}", f"decoder/spamamba{s}")
           for s in (3, 2, 1, 0)), ())
    + sum((_fill(CONV_BIAS, f"proj_out{s}", f"decoder/up_conv{s}") for s in (3, 2, 1)), ())
    # proj_final: official out width final_dims = 64 always, ours d0 (equal only when d0 = 64)
    + _fill(CONV_BIAS, "proj_final", "decoder/out_conv")
    + _fill(CONV_BIAS, "disp_head1.conv1", "decoder/disp_head")
)

SEG_HEAD = (
    _neck("decode_head.PPM", "decoder/fpn/neck")
    + sum((_fill(CONV_MODULE, f"decode_head.proj_out{s}", f"decoder/fpn/reduce{s}")
           for s in (3, 2, 1)), ())
    + sum((_fill(SPATIAL_MAMBA_BLOCK, f"decode_head.spa_mab{s}", f"decoder/fpn/spamamba{s}")
           for s in (2, 1, 0)), ())
    + _fill(CONV_MODULE, "decode_head.proj_final", "decoder/fpn/fpn_conv0")
    + sum((_fill(CONV_MODULE, f"decode_head.conv_p{s}", f"decoder/fpn/fpn_conv{s}")
           for s in (1, 2, 3)), ())
    + _fill(CONV_MODULE, "decode_head.fpn_bottleneck", "decoder/fpn_bottleneck")
    + _fill(CONV_BIAS, "decode_head.conv_seg", "decoder/cls_seg")
    + _fill(CONV_MODULE, "auxiliary_head.convs.0", "decoder/aux_conv")
    + _fill(CONV_BIAS, "auxiliary_head.conv_seg", "decoder/aux_cls")
)

# Official decoder keys (templates; {s} stage, {i} index) with no counterpart here.
UNMAPPED_OFFICIAL = (
    # depth, use_proj: 1x1 Conv2d(in_channels[s], 64 * 2^s) adapters, built only for encoders
    # whose widths are not 64/128/256/512 at width_multiplier 1 (not VSSD); we have no such layer.
    "conv_p{s}.weight", "conv_p{s}.bias",
    # depth, neck "ppm" (the mmseg-style PSP head used as the neck: psp_modules i = 0..3 for the
    # pool scales 1, 2, 3, 6, 1x1 ConvModules C3 -> 512, GroupNorm(256 groups) for scale 1 and
    # BN otherwise; bottleneck 3x3 C3 + 4*512 -> 512): ours has only the necks "sp" and "none".
    "PPM.psp_modules.{i}.1.conv.weight",
    "PPM.psp_modules.0.1.gn.weight", "PPM.psp_modules.0.1.gn.bias",
    "PPM.psp_modules.{i}.1.bn.weight", "PPM.psp_modules.{i}.1.bn.bias",
    "PPM.psp_modules.{i}.1.bn.running_mean", "PPM.psp_modules.{i}.1.bn.running_var",
    "PPM.bottleneck.conv.weight",
    "PPM.bottleneck.bn.weight", "PPM.bottleneck.bn.bias",
    "PPM.bottleneck.bn.running_mean", "PPM.bottleneck.bn.running_var",
)

EXTRA_TRANSFORMS = ("squeeze_last",)


# ------------------------------------------------------------------------------ transforms
def to_ours_extra(kind: str, a: np.ndarray) -> np.ndarray:
  """Official array -> ours, for the transforms keymap.to_ours does not know.

  "squeeze_last": drop a trailing axis of size 1 ((d, 1) -> (d,)); refuses any other size.
  """
  if kind == "squeeze_last":
    if a.ndim < 1 or a.shape[-1] != 1:
      raise ValueError(f"squeeze_last: expected a trailing axis of size 1, got shape {a.shape}")
    return np.ascontiguousarray(a[..., 0])
  raise ValueError(f"unknown extra transform {kind!r}; extra transforms: {EXTRA_TRANSFORMS}")


def to_official_extra(kind: str, a: np.ndarray) -> np.ndarray:
  """Our array -> the official layout (inverse of `to_ours_extra`)."""
  if kind == "squeeze_last":
    return np.ascontiguousarray(a[..., None])
  raise ValueError(f"unknown extra transform {kind!r}; extra transforms: {EXTRA_TRANSFORMS}")


def official_shape_extra(kind: str, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "squeeze_last":
    return tuple(ours_shape) + (1,)
  raise ValueError(f"unknown extra transform {kind!r}; extra transforms: {EXTRA_TRANSFORMS}")


# ------------------------------------------------------------------------------ expansion
def dense_rows(task: str, space, head_cfg: dict | None = None) -> list[keymap.Row]:
  """Rows of the decoder of task "depth" or "segmentation" (paths start with "decoder").

  space: the backbone's search space (the decoders take its 4 stage widths; the table does not
    depend on them, but at presets other than "base" the depth `proj_final` / `disp_head1`
    shapes differ from ours: the official final width is 64, ours d0).
  head_cfg: our head config; for depth, neck "none" drops the `PPM.*` rows (the official
    nn.Identity neck has no keys).
  """
  if space.num_stages != 4:
    raise ValueError(f"the dense decoders take 4 stages, the space has {space.num_stages}")
  cfg = dict(head_cfg or {})
  if task == "depth":
    rules = DEPTH_DECODER
    neck = cfg.get("neck", "sp")
    if neck == "none":
      rules = tuple(r for r in rules if r not in DEPTH_NECK)
    elif neck != "sp":
      raise ValueError(f"depth head: neck {neck!r} has no official counterpart in the table")
    return keymap._expand(rules)
  if task == "segmentation":
    return keymap._expand(SEG_HEAD)
  raise ValueError(f"dense_rows: task {task!r} not in ('depth', 'segmentation')")
