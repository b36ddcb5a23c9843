"""ONNX export (evonas_jax.export_onnx): onnxruntime runs the converted subnets and gives the
outputs JAX gives, for a hybrid subnet with all three mixers (the SS2D selective scan becomes an
ONNX Loop, the VSSD mixer and attention plain ops) and for the depth and segmentation heads.

References: the hybrid subnet is compared with the MASKED supernet (full-width weights and
masks, no slicing), so a slicing or conversion error both show; the dense subnets with their
JAX standalone network (test_heads proves that equal to masked mode). Tolerance 1e-4 relative
to max(1, |output|), the issue's bound; measured ~1e-6 (float32 operation order only).
"""
import os

import jax
import numpy as np
import pytest

pytest.importorskip("jax2onnx")
pytest.importorskip("onnxruntime")

from evonas_jax import export_onnx  # noqa: E402
from evonas_jax.nn import init_supernet  # noqa: E402
from evonas_jax.nn.dense import dense_subnet_model, extract_dense_subnet, init_dense_model  # noqa: E402,E501
from evonas_jax.nn.supernet import extract_subnet, subnet_model  # noqa: E402
from evonas_jax.space import arch_masks, get_space  # noqa: E402

TOL = 1e-4


def _close(got, want):
  bound = TOL * max(1.0, float(np.max(np.abs(want))))
  err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
  assert got.shape == want.shape and err <= bound, (got.shape, want.shape, err, bound)
  return err


def test_hybrid_subnet_with_ss2d_equals_masked_supernet(tmp_path):
  space = get_space("hybrid", "tiny")
  model, v = init_supernet(space, 10, jax.random.key(0), (16, 16, 1))
  rng = np.random.default_rng(0)
  # Shared BN statistics away from (0, 1), so a dropped BatchNorm cannot pass.
  v = jax.tree.map(np.asarray, v)
  v["batch_stats"] = jax.tree.map(lambda a: rng.uniform(0.5, 2.0, a.shape).astype(a.dtype),
                                  v["batch_stats"])
  # The smallest subnet (fewest blocks: the conversion's cost grows with the graph) with one
  # stage per mixer type and SS2D twice.
  arch = space.validate_arch(space.smallest(block_type=("ss2d", "vssd", "attention", "ss2d")))
  images = rng.normal(size=(6, 16, 16, 1)).astype(np.float32)
  want = np.asarray(jax.jit(model.apply)(v, images, arch_masks(space, arch)))

  sub = subnet_model(space, arch, 10, scan_backend="reference")
  sv = jax.device_get(extract_subnet(v, space, arch))
  path = str(tmp_path / "hybrid.onnx")
  desc = export_onnx.convert(lambda x: sub.apply(sv, x), (16, 16, 1), path, ["logits"])
  assert desc["bytes"] == os.path.getsize(path) and desc["inputs"]["images"][0] == "B"
  import onnx
  ops = {n.op_type for n in onnx.load(path).graph.node}
  assert "Loop" in ops or "Scan" in ops, sorted(ops)   # the selective scan's recurrence
  sess = export_onnx.session(path)
  _close(export_onnx.run(sess, images)["logits"], want)
  # Symbolic batch: another batch size, row for row the same.
  _close(export_onnx.run(sess, images[:1])["logits"], want[:1])


@pytest.mark.parametrize("head", ["depth", "segmentation"])
def test_dense_subnet_equals_jax(head, tmp_path):
  space = get_space("evonas", "tiny")
  image = (32, 64, 3)   # non-square: an H/W swap in the converted resize ops shows
  cfg = {"depth": {}, "segmentation": {"fpn_channels": 16, "aux_channels": 8, "dropout": 0.0}}
  model, v = init_dense_model(space, head, cfg[head], 5, 10.0, jax.random.key(1), image)
  arch = space.smallest()
  net = dense_subnet_model(space, arch, head, cfg[head], 5, 10.0, scan_backend="reference")
  sv = jax.device_get(extract_dense_subnet(v, space, arch))
  images = np.random.default_rng(1).normal(size=(2, *image)).astype(np.float32)
  want = jax.jit(net.apply)(sv, images)
  names = export_onnx.output_names(want)
  assert names == (["depth"] if head == "depth" else ["aux_logits", "logits"])
  path = str(tmp_path / f"{head}.onnx")
  export_onnx.convert(lambda x: net.apply(sv, x), image, path, names)
  got = export_onnx.run(path, images)
  for name, w in zip(names, export_onnx.flatten_outputs(want)):
    _close(got[name], w)
