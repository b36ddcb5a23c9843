"""ONNX export (evonas_jax.export_onnx): onnxruntime runs a converted hybrid subnet with all
three mixers (the SS2D selective scan becomes an ONNX Loop, the VSSD mixer and attention plain
ops) and gives the outputs of the MASKED supernet (full-width weights and masks, no slicing), so
a slicing or a conversion error both show. Tolerance 1e-4 relative to max(1, |output|);
measured ~1e-6 (float32 operation order only). The classification export path (CLI, budget
selection, real digits) is tested in test_export.py.

Depth and segmentation subnets (the dense decoders) are compared with JAX on a trained model
in test_dense_pipeline.py (depth) and test_dense_seg.py (segmentation).
"""
import os

import jax
import numpy as np
import pytest

pytest.importorskip("jax2onnx")
pytest.importorskip("onnxruntime")

from evonas_jax import export_onnx  # noqa: E402
from evonas_jax.nn import init_supernet  # noqa: E402
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
