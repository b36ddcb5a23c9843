"""int8 post-training quantisation of the exported ONNX model (evonas_jax.export_int8).

(a) A hand-built fp32 ONNX model, images (N, 4, 4, 6) -> MatMul W (6, 5) -> Add b (5,) -> Relu,
    is quantised; its onnxruntime output equals a naive numpy int8 fake-quant reference (weights
    quantised per output channel symmetric here, independently of onnxruntime; the activation
    scales / zero points read back from the QDQ model) to within one output quantisation step,
    and the float model within the error bound derived in `test_matmul_relu_matches_numpy_int8`.
(b) An end-to-end CLI export of a small classification subnet (random supernet, real digits)
    with --formats onnx,int8 and an impossible --int8_max_drop=-1: exit status 3 and REJECTED
    in the summary (exit 0 with --allow_int8_drop, still "rejected" in arch.json), every
    arch.json field, the fp32 accuracy equal to an independent onnxruntime evaluation; the same
    artifact step with a large bound says "ok".
(c) int8 without onnx, and int8 for a dense task, fail with a clear error naming --formats.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from evonas_jax import data as data_lib, export_int8, export_lib  # noqa: E402
from evonas_jax.checkpoint import save_pytree  # noqa: E402
from evonas_jax.nn import init_supernet  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402
from helpers import ROOT, load_config  # noqa: E402

C, K = 6, 5


def _matmul_relu(path, w, b):
  g = helper.make_graph(
      [helper.make_node("MatMul", ["images", "W"], ["mm"]),
       helper.make_node("Add", ["mm", "B"], ["pre"]),
       helper.make_node("Relu", ["pre"], ["logits"])], "matmul_relu",
      [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 4, 4, C])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 4, K])],
      [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
  m.ir_version = 8
  onnx.save(m, path)


def _fake_quant(x, scale, zp, qmin=-128, qmax=127):
  """int8 quantise -> dequantise, round half to even (ONNX QuantizeLinear's rounding)."""
  return (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale


def test_matmul_relu_matches_numpy_int8(tmp_path):
  """Reference: x~ = fq(x; s_x, z_x); W~[:, k] = s_k * clip(round(W[:, k] / s_k), -127, 127) with
  s_k = max_i |W[i, k]| / 127 (computed here); m = x~ W~; y~ = relu(fq(m; s_m, z_m) + b).
  onnxruntime runs the fused integer kernel and requantises m itself: it may land one step of
  s_m off where a value sits at a rounding tie, so |ort - y~| <= s_m (+ float32 slack).

  Float vs int8: with no clipping (the test inputs ARE the calibration images, so every x and
  float m lies inside its calibrated range), |x - x~| <= s_x / 2 and |W - W~| <= s_k / 2, so
    |x W - x~ W~|_k <= sum_i (|x_i| s_k + |W~_ik| s_x) / 2 =: e_k,
  requantising m adds at most s_m / 2 (clipping onto a range containing the float value only
  moves it closer), and relu(. + b) is 1-Lipschitz: |y - y_int8| <= e_k + s_m / 2 + s_m (the
  kernel's tie step) per element."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(C, K)).astype(np.float32)
  b = rng.normal(size=(K,)).astype(np.float32)
  x = rng.normal(size=(24, 4, 4, C)).astype(np.float32)
  fp32, int8 = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
  _matmul_relu(fp32, w, b)
  desc = export_int8.quantize(fp32, int8, x, calib_batch=8)
  assert desc["quantized_op_types"] == {"MatMul": 1} and desc["preprocess"]["ran"]
  assert desc["integer_kernels"] == {"QLinearMatMul": 1}   # onnxruntime runs it in int8
  assert desc["calibration"] == {"method": "minmax", "images": 24, "batch": 8}
  assert desc["bytes"] == os.path.getsize(int8)

  q = onnx.load(int8)
  init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
  qnodes = {n.input[0]: n for n in q.graph.node if n.op_type == "QuantizeLinear"}
  sx, zx = (float(init[qnodes["images"].input[i]]) for i in (1, 2))
  sm, zm = (float(init[qnodes["mm"].input[i]]) for i in (1, 2))
  # Calibration min/max: the ranges hold the data (and 0), the scale spans 255 steps.
  assert sx == pytest.approx((max(x.max(), 0) - min(x.min(), 0)) / 255, rel=1e-6)
  # Weights: our own per-channel symmetric quantisation equals the model's int8 initializer.
  sk = np.abs(w).max(0) / 127
  wq = np.clip(np.round(w / sk), -127, 127)
  wdq = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
         and n.input[0] in init and init[n.input[0]].shape == (C, K)]
  assert len(wdq) == 1 and init[wdq[0].input[0]].dtype == np.int8
  np.testing.assert_allclose(init[wdq[0].input[1]], sk, rtol=1e-6)
  assert np.abs(init[wdq[0].input[0]].astype(np.int64) - wq).max() <= 1   # ties in s_k rounding
  assert not init[wdq[0].input[2]].any()                                  # symmetric: zp = 0

  xt = _fake_quant(x, sx, zx)
  m = xt @ (wq * sk).astype(np.float32)
  ref = np.maximum(_fake_quant(m, sm, zm) + b, 0)
  got = export_int8._session(int8).run(None, {"images": x})[0]
  assert np.abs(got - ref).max() <= sm + 1e-5, (np.abs(got - ref).max(), sm)
  assert np.mean(np.abs(got - ref) <= 1e-5) >= 0.99   # measured: all equal

  y = np.maximum(x @ w + b, 0)
  bound = ((np.abs(x) @ np.ones((C, 1))) * sk + np.abs(wq * sk).sum(0) * sx) / 2 + 1.5 * sm
  assert np.all(np.abs(got - y) <= bound + 1e-5), np.max(np.abs(got - y) - bound)
  # The quantisation is not a no-op: int8 differs from float by more than float32 noise.
  assert np.abs(got - y).max() > 1e-3

  t = export_int8.time_model(int8, (1, 4, 4, C), warmup=2, runs=5)
  assert t["runs"] == 5 and t["threads"] == 1 and 0 < t["p50_ms"] <= t["p90_ms"]


@pytest.fixture(scope="module")
def train_workdir(tmp_path_factory):
  """A training workdir: the ci_tiny config (evonas/tiny, 16x16 digits, 1 BN calibration
  batch) and a randomly initialised supernet as final/; the smallest subnet's genome."""
  root = tmp_path_factory.mktemp("int8")
  train_dir = root / "train"
  cfg = load_config("ci_tiny")
  cfg.data.tfds_data_dir = str(root / "tfds")
  os.makedirs(train_dir)
  with open(train_dir / "config.json", "w") as f:
    f.write(cfg.to_json_best_effort(sort_keys=True, indent=1))
  space = get_space(cfg.space, cfg.preset)
  info = data_lib.dataset_info(cfg.data)
  _, variables = init_supernet(space, info.num_classes, jax.random.key(1), info.image_shape)
  save_pytree(str(train_dir / "final"), jax.tree.map(np.asarray, variables))
  genome = ",".join(map(str, space.encode(space.smallest())))
  return str(train_dir), genome, cfg


def test_cli_export_int8_rejected_then_accepted(train_workdir, tmp_path):
  train_dir, genome, cfg = train_workdir
  out = str(tmp_path / "e")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}

  def cli(*extra):
    return subprocess.run([sys.executable, "-m", "evonas_jax.export", "--workdir", train_dir,
                           "--select", genome, "--out", out, "--formats", "onnx,int8",
                           "--int8_max_drop=-1", "--int8_val_images", "150",
                           "--compile_cache_dir", "none", *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  p = cli()
  assert p.returncode == 3, (p.stdout + p.stderr)[-3000:]
  assert "[REJECTED]" in p.stdout and "pass --allow_int8_drop" in p.stdout, p.stdout[-2000:]
  # --allow_int8_drop: exit 0, but the export still says rejected.
  p = cli("--overwrite", "--allow_int8_drop")
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
  assert "WARNING: int8 model REJECTED" in p.stdout and "exiting 0" in p.stdout
  assert sorted(os.listdir(out)) == ["arch.json", "model.int8.onnx", "model.onnx", "params",
                                     "params.npz"]
  a = json.load(open(os.path.join(out, "arch.json")))["artifacts"]["int8"]
  assert a["file"] == "model.int8.onnx" and a["metric"] == "accuracy"
  assert a["status"] == "rejected" and a["max_drop"] == -1.0
  assert a["drop"] == pytest.approx(a["metric_fp32"] - a["metric_int8"])
  assert a["validation_images"] == 150 and a["threads"] == 1 and a["batch"] == 1
  assert a["timing"]["runs"] == export_int8.RUNS
  assert a["timing"]["device"].startswith("onnxruntime-cpu")
  for k in ("latency_ms_fp32", "latency_ms_int8"):
    assert 0 < a[k]["p50"] <= a[k]["p90"]
  assert a["speedup"] == pytest.approx(a["latency_ms_fp32"]["p50"] / a["latency_ms_int8"]["p50"])
  src = export_lib.open_source(train_dir)   # the BN calibration batches the export drew
  assert a["calibration"]["images"] == src.calib["batches"] * src.calib["batch_size"]
  assert a["calibration"]["method"] == "minmax"
  qd = a["quantization"]
  assert qd["quantized_op_types"].get("Gemm", 0) > 0 and qd["quantized_op_types"].get("Conv")
  assert qd["integer_kernels"].get("QGemm") and qd["integer_kernels"].get("QLinearConv")
  assert qd["bytes"] == os.path.getsize(os.path.join(out, "model.int8.onnx"))
  assert qd["bytes"] < qd["bytes_fp32"]

  # fp32 accuracy, independently: onnxruntime on the first 150 validation images.
  import onnxruntime as ort
  sess = ort.InferenceSession(os.path.join(out, "model.onnx"),
                              providers=["CPUExecutionProvider"])
  b = next(iter(data_lib.eval_iterator(cfg.data, "validation", 150)))
  logits = sess.run(None, {"images": np.asarray(b["image"], np.float32)})[0]
  assert a["metric_fp32"] == pytest.approx(float(np.mean(logits.argmax(-1) ==
                                                         np.asarray(b["label"]))))

  # The same artifact step with a bound nothing can exceed: "ok", same accuracies.
  calib = np.concatenate(export_lib._calib_batches(src, src.calib["batches"],
                                                   src.calib["batch_size"], src.calib["seed"]))
  vi, vl = export_int8.validation_set(cfg.data, 150)
  ok = export_int8.int8_artifact(out, calib, vi, vl, max_drop=1.0, warmup=2, runs=10,
                                 log=lambda *_: None)
  assert ok["status"] == "ok" and ok["metric_fp32"] == a["metric_fp32"]
  assert ok["metric_int8"] == a["metric_int8"]   # calibration is deterministic


def test_int8_needs_onnx_and_classification(train_workdir, tmp_path):
  train_dir, genome, _ = train_workdir
  for fmts in ("int8", "jax_export,int8"):
    with pytest.raises(ValueError, match=r"--formats=.*int8.*needs onnx .*--formats onnx,int8"):
      export_lib.export_subnet(train_dir, genome, str(tmp_path / "x"), formats=fmts)
  # A dense (depth) training workdir: refused before any weight is loaded.
  dense = tmp_path / "dense"
  os.makedirs(dense / "final")
  with open(dense / "config.json", "w") as f:
    json.dump({"task": "depth", "space": "evonas", "preset": "tiny",
               "data": {"name": "arc2017_local", "crop_size": [96, 128]}}, f)
  with pytest.raises(ValueError, match=r"--formats=onnx,int8: int8 quantisation is "
                                       r"classification-only .* --formats jax_export,onnx"):
    export_lib.export_subnet(str(dense), genome, str(tmp_path / "y"), formats="onnx,int8")
  assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
