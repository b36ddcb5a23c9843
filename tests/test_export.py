"""Standalone export (evonas_jax.export_lib): a pareto row of a search over a (randomly
initialised, directly written) tiny supernet workdir on real digits data is exported; the
exported params, the orbax checkpoint, the jax.export artifact and the numpy-only example all
reproduce the supernet's MASKED-mode logits after the same per-subnet BN recalibration, computed
independently through `supernet_train.recalibrate_bn`. Bad input fails clearly; nothing is
overwritten without --overwrite."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from evonas_jax import data as data_lib, export_lib
from evonas_jax.checkpoint import load_pytree, save_pytree
from evonas_jax.nn import init_supernet
from evonas_jax.nn.cost import arch_cost
from evonas_jax.space import arch_masks, get_space
from evonas_jax.supernet_train import make_bn_step, recalibrate_bn

ROOT = os.path.join(os.path.dirname(__file__), "..")
CALIB_BATCHES, CALIB_BS, SEED = 2, 16, 3


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _dump(cfg, path):
  with open(path, "w") as f:
    f.write(cfg.to_json_best_effort(sort_keys=True, indent=1))


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """A finished training workdir (ci_tiny config, evonas/tiny at 16x16 digits) and a finished
  search workdir pointing at it, with a two-row pareto.json."""
  root = tmp_path_factory.mktemp("export")
  train_dir, search_dir = root / "train", root / "search"
  tcfg = _load_config("ci_tiny")
  tcfg.data.tfds_data_dir = str(root / "tfds")
  os.makedirs(train_dir)
  _dump(tcfg, train_dir / "config.json")
  space = get_space(tcfg.space, tcfg.preset)
  info = data_lib.dataset_info(tcfg.data)
  model, variables = init_supernet(space, info.num_classes, jax.random.key(1), info.image_shape)
  # Shared BN statistics far from any subnet's, so a missing recalibration cannot pass.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(np.asarray, variables)
  variables["batch_stats"] = jax.tree.map(
      lambda a: (rng.uniform(0.5, 2.0, a.shape) if a.ndim else a).astype(a.dtype),
      variables["batch_stats"])
  save_pytree(str(train_dir / "final"), variables)

  scfg = _load_config("search_quickstart")
  scfg.supernet_workdir = str(train_dir)
  scfg.seed = SEED
  scfg.data = tcfg.data
  scfg.evaluator.calib_batches = CALIB_BATCHES
  scfg.evaluator.calib_batch_size = CALIB_BS
  os.makedirs(search_dir)
  _dump(scfg, search_dir / "config.json")
  rows = []
  for i, g in enumerate(space.sample(7, 2)):
    c = arch_cost(space, space.decode(g), info.image_shape, info.num_classes)
    rows.append({"genome": g.tolist(), "arch": space.decode(g).to_dict(), "generation": 3,
                 "accuracy": 0.5 + 0.1 * i, "error": 0.5 - 0.1 * i, "latency_ms": 1.0 + i,
                 "macs": int(c.macs), "params": int(c.params)})
  with open(search_dir / "pareto.json", "w") as f:
    json.dump({"pareto": rows}, f)
  return str(train_dir), str(search_dir), rows, model, variables, tcfg.data


@pytest.fixture(scope="module")
def exported(workdirs):
  _, search_dir, rows = workdirs[:3]
  res = export_lib.export_subnet(search_dir, "1", platforms="cpu,cuda")
  return res, rows[1]


@pytest.fixture(scope="module")
def reference(workdirs, exported):
  """Masked-mode logits of the exported arch after recalibrate_bn on the search's calibration
  batches (drawn here independently), on fresh validation images."""
  _, _, _, model, variables, data_cfg = workdirs
  res, row = exported
  space = get_space("evonas", "tiny")
  arch = space.decode(row["genome"])
  it = data_lib.train_iterator(data_cfg, CALIB_BS, seed=SEED)
  calib = [next(it)["image"] for _ in range(CALIB_BATCHES)]
  masks = arch_masks(space, arch)
  rec = recalibrate_bn(make_bn_step(model), variables, calib, masks)
  images = np.asarray(next(iter(data_lib.eval_iterator(data_cfg, "validation", 5)))["image"])
  logits = np.asarray(jax.jit(model.apply)(rec, images, masks))
  return {"variables": variables, "recalibrated": rec, "images": images, "logits": logits,
          "arch": arch, "space": space}


def _maxdiff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_folder_and_metadata(exported, workdirs):
  res, row = exported
  train_dir, search_dir, _ = workdirs[:3]
  assert res.out == os.path.join(search_dir, "export", "pareto_1")
  assert sorted(os.listdir(res.out)) == ["arch.json", "model_cpu.jax_export",
                                         "model_cuda.jax_export", "params", "params.npz"]
  meta = json.load(open(os.path.join(res.out, "arch.json")))
  space = get_space("evonas", "tiny")
  arch = space.decode(row["genome"])
  assert meta["genome"] == row["genome"] and meta["arch"] == arch.to_dict()
  assert meta["space"] == {"name": "evonas", "preset": "tiny", "overrides": {}}
  assert meta["num_classes"] == 10 and meta["image_shape"] == [16, 16, 1]
  assert meta["objectives"]["accuracy"] == row["accuracy"] and meta["pareto_row"] == 1
  assert meta["source"]["supernet_checkpoint"] == os.path.join(train_dir, "final")
  assert meta["bn_recalibration"] == {"batches": CALIB_BATCHES, "batch_size": CALIB_BS,
                                      "seed": SEED, "split": "train (augmented)"}
  c = arch_cost(space, arch, (16, 16, 1), 10)
  assert (meta["cost"]["macs"], meta["cost"]["params"]) == (c.macs, c.params)
  # The stored params are exactly the analytic count of the standalone network.
  assert meta["cost"]["stored_params"] == c.params
  assert meta["normalization"]["mean"] == [0.3] and meta["normalization"]["std"] == [0.35]
  for p in ("cpu", "cuda"):
    a = meta["artifacts"][p]
    assert a["platforms"] == [p] and a["batch"] == "b"
    assert a["bytes"] == os.path.getsize(os.path.join(res.out, a["file"]))
  # Variables are an argument, not baked-in constants: the artifact is smaller than the params.
  assert meta["artifacts"]["cpu"]["bytes"] < 4 * meta["cost"]["params"]


def test_params_equal_masked_supernet(exported, reference):
  res, _ = exported
  ref = reference
  module, variables, _ = export_lib.load_export(res.out)
  # Recalibrated statistics are this subnet's (masked-mode recalibrate_bn), not the shared ones.
  flat_rec = export_lib.flatten_variables({"batch_stats": ref["recalibrated"]["batch_stats"]})
  flat_old = export_lib.flatten_variables({"batch_stats": ref["variables"]["batch_stats"]})
  flat_exp = export_lib.flatten_variables({"batch_stats": variables["batch_stats"]})
  assert flat_exp.keys() == flat_rec.keys()
  assert max(_maxdiff(flat_exp[k], flat_rec[k]) for k in flat_rec) <= 1e-5
  assert max(_maxdiff(flat_exp[k], flat_old[k]) for k in flat_rec) > 1e-2
  logits = jax.jit(module.apply)(variables, ref["images"])
  assert logits.shape == (5, 10)
  assert _maxdiff(logits, ref["logits"]) <= 1e-5
  # npz and orbax hold the same variables.
  npz = dict(np.load(os.path.join(res.out, "params.npz")))
  flat = export_lib.flatten_variables(load_pytree(os.path.join(res.out, "params")))
  assert npz.keys() == flat.keys() and all(np.array_equal(npz[k], flat[k]) for k in npz)


def test_cpu_artifact_equals_masked_supernet(exported, reference):
  from jax import export
  res, _ = exported
  with open(os.path.join(res.out, "model_cpu.jax_export"), "rb") as f:
    exp = export.deserialize(f.read())
  params = dict(np.load(os.path.join(res.out, "params.npz")))
  out = exp.call(params, reference["images"])
  assert out.shape == (5, 10) and _maxdiff(out, reference["logits"]) <= 1e-5
  # Symbolic batch: another batch size runs too, row by row the same.
  out2 = exp.call(params, reference["images"][:2])
  assert _maxdiff(out2, reference["logits"][:2]) <= 1e-5
  with open(os.path.join(res.out, "model_cuda.jax_export"), "rb") as f:
    cuda = export.deserialize(f.read())
  assert cuda.platforms == ("cuda",) and "b" in str(cuda.in_avals[-1])


def test_example_script_prints_matching_logits(exported, reference, tmp_path):
  res, _ = exported
  np.save(tmp_path / "x.npy", reference["images"])
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "run_export.py"), res.out,
                      "--images", str(tmp_path / "x.npy")], capture_output=True, text=True,
                     env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("logits_json:")][0]
  logits = np.array(json.loads(line.split(":", 1)[1]))
  assert logits.shape == (5, 10) and _maxdiff(logits, reference["logits"]) <= 1e-5
  # The example really is standalone.
  lines = open(os.path.join(ROOT, "examples", "run_export.py")).read().splitlines()
  imports = [l for l in lines if l.strip().startswith(("import ", "from "))]
  assert imports and not any("evonas_jax" in l for l in imports), imports


def test_refuses_to_overwrite(exported, workdirs):
  res, _ = exported
  _, search_dir, _ = workdirs[:3]
  before = {f: os.path.getmtime(os.path.join(res.out, f)) for f in os.listdir(res.out)}
  with pytest.raises(FileExistsError, match="--overwrite"):
    export_lib.export_subnet(search_dir, 1)
  after = {f: os.path.getmtime(os.path.join(res.out, f)) for f in os.listdir(res.out)}
  assert before == after


def test_training_workdir_genome_and_overwrite(workdirs, exported, reference, tmp_path):
  """A training workdir with a genome; --overwrite replaces the folder; 0 recalibration
  batches keep the shared statistics."""
  train_dir, _, rows = workdirs[:3]
  out = str(tmp_path / "e")
  os.makedirs(out)
  genome = ",".join(map(str, rows[1]["genome"]))
  r = export_lib.export_subnet(train_dir, genome, out, platforms="cpu", bn_recalib_batches=0,
                               overwrite=True, batch_size=5)
  assert sorted(os.listdir(out)) == ["arch.json", "model_cpu.jax_export", "params",
                                     "params.npz"]
  assert r.meta["objectives"] is None and r.meta["source"]["kind"] == "train"
  assert r.meta["artifacts"]["cpu"]["batch"] == 5
  flat_old = export_lib.flatten_variables({"batch_stats": reference["variables"]["batch_stats"]})
  npz = np.load(os.path.join(out, "params.npz"))
  assert all(np.array_equal(npz[k], flat_old[k]) for k in flat_old)
  # Same params as the search export (same supernet, same arch), only the BN stats differ.
  npz_search = np.load(os.path.join(exported[0].out, "params.npz"))
  assert all(np.array_equal(npz[k], npz_search[k]) for k in npz.files if k.startswith("params/"))


def test_budget_select_and_onnx_equal_masked_supernet(workdirs, reference, tmp_path):
  """--select by a latency budget picks the most accurate row within it (row 1: rows have
  latency 1.0 and 2.0 ms, accuracy 0.5 and 0.6), and --formats onnx writes model.onnx whose
  onnxruntime logits equal the masked supernet's (after the same recalibration) on real
  validation images. 1e-4 relative to max(1, |logits|): ONNX's float32 op order differs from
  XLA's (measured ~1e-6)."""
  pytest.importorskip("jax2onnx")
  from evonas_jax import export_onnx
  _, search_dir, _ = workdirs[:3]
  with pytest.raises(ValueError, match=r"smallest latency_ms on the front is 1\b"):
    export_lib.export_subnet(search_dir, "latency_ms<0.5")
  out = str(tmp_path / "onnx")
  r = export_lib.export_subnet(search_dir, "latency_ms<=2.5", out, formats="onnx")
  assert r.meta["pareto_row"] == 1
  assert sorted(os.listdir(out)) == ["arch.json", "model.onnx", "params", "params.npz"]
  onnx_meta = json.load(open(os.path.join(out, "arch.json")))["artifacts"]["onnx"]
  assert onnx_meta["check"]["outputs"]["logits"]["max_abs_diff"] <= 1e-4
  got = export_onnx.run(os.path.join(out, "model.onnx"), reference["images"])["logits"]
  want = reference["logits"]
  assert got.shape == want.shape
  assert _maxdiff(got, want) <= 1e-4 * max(1.0, float(np.max(np.abs(want))))
  # The standalone example needs numpy + onnxruntime only.
  np.save(tmp_path / "x.npy", reference["images"])
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "run_onnx.py"), out,
                      "--images", str(tmp_path / "x.npy")], capture_output=True, text=True,
                     env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("logits_json:")][0]
  assert _maxdiff(np.array(json.loads(line.split(":", 1)[1])), got) <= 1e-6
  lines = open(os.path.join(ROOT, "examples", "run_onnx.py")).read().splitlines()
  imports = [l for l in lines if l.strip().startswith(("import ", "from "))]
  assert imports and not any("jax" in l or "evonas" in l for l in imports), imports
  with pytest.raises(ValueError, match=r"--formats='tflite': unknown \['tflite'\]"):
    export_lib.export_subnet(search_dir, 1, str(tmp_path / "x"), formats="tflite")


@pytest.mark.parametrize("select,match", [
    ("7", r"pareto.json .* has 2 rows; allowed row indices 0\.\.1"),
    ("-1", r"allowed row indices 0\.\.1"),
    ("abc", r"--select='abc' is not a pareto.json row index .* or a genome"),
    ("1,0,1", r"genome must have shape \(28,\)"),
    (",".join(["9"] + ["0"] * 9 + ["1"] * 18), r"gene 0 \(mlp_ratio\[stage 1\]\) = 9 is out of "
                                                  r"range: allowed indices 0\.\.5"),
])
def test_bad_select(workdirs, select, match):
  _, search_dir, _ = workdirs[:3]
  with pytest.raises(ValueError, match=match):
    export_lib.export_subnet(search_dir, select)


def test_bad_inputs(workdirs, tmp_path):
  train_dir, search_dir, rows = workdirs[:3]
  with pytest.raises(ValueError, match=r"is a training workdir .* pass a genome"):
    export_lib.export_subnet(train_dir, "0")
  with pytest.raises(ValueError, match=r"--platforms='cpu,tpu': unknown \['tpu'\]; allowed"):
    export_lib.export_subnet(search_dir, 0, platforms="cpu,tpu")
  with pytest.raises(FileNotFoundError, match="neither a finished search"):
    os.makedirs(tmp_path / "w")
    open(tmp_path / "w" / "config.json", "w").write("{}")
    export_lib.export_subnet(str(tmp_path / "w"), "0")
  # A genome selection on a search workdir finds its pareto row.
  src = export_lib.open_source(search_dir)
  arch, _, row, idx, name = export_lib.select_subnet(src, rows[0]["genome"])
  assert idx == 0 and row["accuracy"] == rows[0]["accuracy"] and name.startswith("genome_")


def test_cli_bad_select_message(workdirs):
  _, search_dir, _ = workdirs[:3]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-m", "evonas_jax.export", "--workdir", search_dir,
                      "--select", "5"], capture_output=True, text=True, env=env, cwd=ROOT,
                     timeout=120)
  assert p.returncode != 0
  assert "allowed row indices 0..1" in p.stdout + p.stderr
  assert not os.path.exists(os.path.join(search_dir, "export", "pareto_5"))


def test_cuda_lowering_uses_pallas_scan_for_ss2d_with_fixed_batch():
  """SS2D archs: the CUDA artifact carries the Pallas Triton scan when the batch is fixed; with a
  symbolic batch the Triton grid cannot be dynamic, so it falls back (with a note) to the
  reference scan. Lowering only (no compile, no weights: abstract shapes)."""
  import dataclasses
  space = get_space("hybrid", "tiny")
  arch = space.decode(space.sample(2, 1)[0])
  arch = dataclasses.replace(arch, block_type=("ss2d", "attention", "vssd", "attention"),
                             depth=((1, 0), (1, 0, 0, 0), (1, 0, 0, 0, 0, 0, 0, 0), (1, 0, 0, 0)))
  task = export_lib.build_task({}, space, 10)
  flat_spec = _flat_spec(task, arch)
  notes = []
  exp, backend, batch = export_lib.lower(task, arch, flat_spec, (16, 16, 1), "cuda", 0,
                                         notes.append)
  assert (backend, batch, exp.platforms) == ("reference", "b", ("cuda",))
  assert len(notes) == 1 and "pallas selective scan failed" in notes[0] and "--batch_size" in notes[0]
  exp, backend, batch = export_lib.lower(task, arch, flat_spec, (16, 16, 1), "cuda", 4,
                                         notes.append)
  assert (backend, batch) == ("pallas", 4) and len(notes) == 1
  assert "__gpu$xla.gpu.triton" in exp.mlir_module()
  exp, backend, _ = export_lib.lower(task, arch, flat_spec, (16, 16, 1), "cpu", 4, notes.append)
  assert backend == "reference" and "triton" not in exp.mlir_module()
  # An arch without SS2D blocks has no scan: the reference lowering, no note.
  plain = dataclasses.replace(arch, block_type=("vssd", "attention", "vssd", "attention"))
  exp, backend, _ = export_lib.lower(task, plain, _flat_spec(task, plain), (16, 16, 1), "cuda", 0,
                                     notes.append)
  assert backend == "reference" and len(notes) == 1


def _flat_spec(task, arch):
  module = task.make_module(arch, "reference")
  abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 16, 16, 1), np.float32))
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
          for k, v in export_lib.flatten_variables(abstract).items()}
