"""onnxruntime latency: the timing primitive, latency bundles (per-op ONNX models + the standalone
device-side table builder), the onnxruntime table/measurement backend and its search wiring.

The bundle is built for a deliberately tiny space (one block per stage, one width choice each:
13 ops) at 16x16 inputs, so the conversions stay few. No timing assertions beyond positivity and
p50 <= p90: the machine running the suite is shared.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from evonas_jax import latency, latency_bundle, ort_latency  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402

IMG = (16, 16, 1)
TOL = 1e-4


@pytest.fixture(scope="module")
def space():
  return dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 1, 1, 1),
                             mlp_choices=(2.0,), expand_choices=(1.0,), d_state_choices=(16,))


@pytest.fixture(scope="module")
def bundle(space, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bundle") / "b")
  manifest = latency_bundle.write_bundle(space, 10, IMG, out, progress=False)
  return out, manifest


def _matmul_relu_model(n: int = 64) -> bytes:
  """Y = Relu(X @ W), X (B, n), W (n, n) as an initializer."""
  from onnx import TensorProto, helper, numpy_helper
  w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32),
                              "W")
  g = helper.make_graph(
      [helper.make_node("MatMul", ["X", "W"], ["H"]), helper.make_node("Relu", ["H"], ["Y"])],
      "mm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", n])],
      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", n])], [w])
  m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
  onnx.checker.check_model(m)
  return m.SerializeToString()


def test_time_onnx_on_a_hand_built_model(tmp_path):
  blob = _matmul_relu_model()
  r = ort_latency.time_onnx(blob, (1, 64), threads=1, warmup=2, runs=15)
  assert 0 < r["p50_ms"] <= r["p90_ms"] and r["mean_ms"] > 0
  assert r["threads"] == 1 and r["warmup"] == 2 and r["runs"] == 15
  assert r["ort_version"] == ort.__version__
  if hasattr(os, "sched_getaffinity"):
    assert r["affinity"] == sorted(os.sched_getaffinity(0))
  # A path works as well as bytes, and a shape without the batch dimension means batch 1.
  path = tmp_path / "mm.onnx"
  path.write_bytes(blob)
  r2 = ort_latency.time_onnx(str(path), (64,), threads=2, warmup=0, runs=3)
  assert r2["threads"] == 2 and 0 < r2["p50_ms"] <= r2["p90_ms"]
  with pytest.raises(ValueError, match="threads"):
    ort_latency.time_onnx(blob, (1, 64), threads=0)
  with pytest.raises(ValueError, match="input_shape"):
    ort_latency.time_onnx(blob, (1, 2, 64))


def test_ort_latency_module_is_standalone():
  # It is copied into bundles for devices without jax: only stdlib, numpy and onnxruntime.
  src = open(ort_latency.__file__).read()
  imports = {ln.split()[1].split(".")[0] for ln in src.splitlines()
             if ln.startswith(("import ", "from "))}
  assert imports <= {"__future__", "os", "platform", "time", "typing", "numpy", "onnxruntime"}


def test_bundle_layout_and_the_shared_op_list(space, bundle):
  out, m = bundle
  ops = latency.table_ops(space, 10, IMG)
  assert [o["key"] for o in m["ops"]] == [op.key for op in ops] + ["dispatch_overhead"]
  assert len(ops) == 5 + 4 + 4   # stem, 3 downsamples, head; 4 mixer halves; 4 MLP halves
  for f in ("space", "preset", "dims", "max_depths", "num_classes", "image_shape", "batch",
            "evonas_jax_version"):
    assert f in m, f
  assert m["max_depths"] == [1, 1, 1, 1] and m["image_shape"] == list(IMG) and m["batch"] == 1
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == m
  for o, op in zip(m["ops"], ops):
    assert os.path.exists(os.path.join(out, o["file"]))
    assert o["input_shape"] == list(op.input_shape) and o["reps"] == op.reps
  assert {op.reps for op in ops if "/" in op.key} == {8}
  for f in ("build_device_table.py", "ort_latency.py"):
    assert os.path.exists(os.path.join(out, f))


def test_each_op_model_equals_the_jax_op(space, bundle):
  """Every per-op ONNX model (chained ones included) against the JAX op applied `reps` times
  with the same variables, on a random input: an independent check of the conversion and of
  the ONNX-level chaining."""
  import jax
  from evonas_jax import export_onnx
  out, m = bundle
  ops = latency.table_ops(space, 10, IMG, scan_backend="reference")
  rng = np.random.default_rng(1)
  for op, o in zip(ops, m["ops"]):
    v = latency_bundle.op_variables(op)
    x = rng.standard_normal(op.input_shape).astype(np.float32)
    fn = latency._looped(op.module, op.reps) if op.reps > 1 else jax.jit(op.module.apply)
    want = np.asarray(fn(v, x))
    got = export_onnx.run(os.path.join(out, o["file"]), x)["y"]
    bound = TOL * max(1.0, float(np.max(np.abs(want))))
    assert got.shape == want.shape, op.key
    assert float(np.max(np.abs(got - want))) <= bound, op.key
  # The chained graph holds reps copies of the op, sharing one set of weights.
  mixer = next(o for o in m["ops"] if "/mixer/" in o["key"])
  g = onnx.load(os.path.join(out, mixer["file"])).graph
  names = [i.name for i in g.initializer]
  assert len(names) == len(set(names))


_NO_JAX = """
import importlib.abc, runpy, sys
class _Block(importlib.abc.MetaPathFinder):
  # A device has neither jax nor evonas_jax: make any import of them fail loudly.
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax", "evonas_jax"):
      raise ImportError("blocked on the device: " + name)
sys.meta_path.insert(0, _Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_standalone_script_in_a_clean_environment(space, bundle, tmp_path):
  out, _ = bundle
  dev = tmp_path / "device"
  shutil.copytree(out, dev)
  env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
  proc = subprocess.run(
      [sys.executable, "-I", "-c", _NO_JAX, "build_device_table.py", ".", "--out", "table.json",
       "--warmup", "1", "--runs", "3", "--quiet"],
      cwd=dev, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  t = latency.LatencyTable.load(str(dev / "table.json"))
  assert t.backend == "onnxruntime" and t.meta["threads"] == 1 and t.meta["runs"] == 3
  assert t.meta["device"] == ort_latency.device_string()
  t.check_compatible(space, 10, IMG)
  ops = latency.table_ops(space, 10, IMG)
  for op in ops:
    s, kind, key = (op.key.split("/", 2) + [None, None])[:3]
    v = t.entries[s] if kind is None else t.entries[s][kind][key]
    assert v > 0, op.key
  assert t.entries["dispatch_overhead"] > 0
  for arch in (space.smallest(), space.largest(), space.decode(space.sample(3))):
    assert t.predict(arch) > 0
  assert t.predict(space.smallest()) <= t.predict(space.largest())


def test_build_and_measure_with_the_onnxruntime_backend(space, bundle, monkeypatch):
  out, _ = bundle

  # LatencyTable.build(backend="onnxruntime") = write a bundle, time it in-process with the
  # script's code; the conversions were done by the fixture, so reuse its bundle here.
  def reuse(space_, num_classes, image_shape, tmp, **kw):
    shutil.rmtree(tmp)
    shutil.copytree(out, tmp)
    with open(os.path.join(tmp, "manifest.json")) as f:
      return json.load(f)
  monkeypatch.setattr(latency_bundle, "write_bundle", reuse)
  called = []
  t = latency.LatencyTable.build(space, 10, IMG, warmup=1, runs=3, progress=False,
                                 backend="onnxruntime", before_timing=lambda: called.append(1))
  assert called == [1] and t.backend == "onnxruntime" and t.meta["compile_seconds"] >= 0
  assert t.predict(space.largest()) > 0
  # Random supernet variables from shapes alone (init_supernet's compiles would dominate).
  import jax
  from evonas_jax.nn import init_supernet
  shapes = jax.eval_shape(lambda k: init_supernet(space, 10, k, IMG)[1], jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = {k: jax.tree.map(lambda a: (
      (1 + 0.1 * np.abs(rng.standard_normal(a.shape))) if k == "batch_stats"   # variances > 0
      else 0.1 * rng.standard_normal(a.shape)).astype(a.dtype), v) for k, v in shapes.items()}
  images = rng.standard_normal((2, *IMG)).astype(np.float32)
  r = latency.measure_onnx_latency(space, space.smallest(), 10, IMG, warmup=1, runs=3,
                                   variables=variables, check_images=images)
  assert 0 < r["p50_ms"] <= r["p90_ms"] and r["convert_seconds"] > 0
  assert r["max_abs_diff"] <= TOL * max(1.0, r["max_abs_jax"])
  with pytest.raises(ValueError, match=r"backend='tvm'.*\('xla', 'onnxruntime'\)"):
    latency.LatencyTable.build(space, 10, IMG, backend="tvm")
  with pytest.raises(ValueError, match="backend='tvm'"):
    latency.measure_latency(space, space.smallest(), 10, IMG, backend="tvm")


def _saved_table(space, tmp_path, **meta):
  t = latency.LatencyTable({"stem": 1.0}, {"backend": "onnxruntime",
                                          "device": ort_latency.device_string(), "threads": 1,
                                          **latency.space_meta(space, 10, IMG, 1), **meta})
  p = str(tmp_path / "table.json")
  t.save(p)
  return p


def test_search_refuses_an_incompatible_table(space, tmp_path):
  from evonas_jax import search_lib
  p = _saved_table(space, tmp_path, image_shape=[28, 28, 1], num_classes=100)
  with pytest.raises(ValueError, match="config.latency_table") as e:
    search_lib.load_device_table(p, space, 10, IMG, "xla")
  assert "image_shape" in str(e.value) and "num_classes" in str(e.value)
  assert "dims" not in str(e.value)
  other = dataclasses.replace(space, max_depths=(1, 2, 2, 1))
  p = _saved_table(space, tmp_path)
  with pytest.raises(ValueError, match="max_depths"):
    search_lib.load_device_table(p, other, 10, IMG, "xla")


def test_search_warns_about_a_table_of_another_device(space, tmp_path, capsys):
  from evonas_jax import search_lib
  p = _saved_table(space, tmp_path)
  search_lib.load_device_table(p, space, 10, IMG, "onnxruntime")
  assert "WARNING" not in capsys.readouterr().out   # this machine's own table
  p = _saved_table(space, tmp_path, device="onnxruntime-cpu:aarch64 (Cortex-A76, 4 cpus)")
  t = search_lib.load_device_table(p, space, 10, IMG, "onnxruntime")
  out = capsys.readouterr().out
  assert "WARNING" in out and "Cortex-A76" in out and "latencies are those of that device" in out
  assert t.entries == {"stem": 1.0}


def test_search_config_validation_of_the_latency_fields(tmp_path):
  from evonas_jax import search_lib
  from helpers import load_config
  cfg = load_config("search_quickstart")
  assert cfg.latency_backend == "xla" and cfg.latency_table == ""
  search_lib.validate_config(cfg)
  cfg.latency_backend = "tensorrt"
  with pytest.raises(ValueError, match=r"config.latency_backend='tensorrt'.*'onnxruntime'"):
    search_lib.validate_config(cfg)
  cfg.latency_backend = "onnxruntime"
  cfg.latency_table = str(tmp_path / "missing.json")
  with pytest.raises(ValueError, match="config.latency_table"):
    search_lib.validate_config(cfg)
