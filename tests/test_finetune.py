"""Fine-tuning one searched subnet (evonas_jax.finetune): a real (tiny) supernet run with a
teacher, a search front written beside it, then the "OFA retrain" of a budget-selected row.

What would fail if the code were wrong:
  * the trained subnet is the selected one, judged from the genome's own semantics rather than
    from the code under test: with weight decay off, every block the genome switches off and
    every MLP hidden unit beyond its width keeps the supernet's exact weights, while the
    blocks it uses change;
  * the "before" metric is the supernet's, "after" is measured on the fine-tuned weights, and
    the projectors start from the supernet's last checkpoint, not from scratch;
  * `export --workdir <finetune dir>` (no --select) exports exactly that genome with the
    fine-tuned weights;
  * bad sources and selections fail with messages naming the field.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from evonas_jax import data as data_lib, export_lib
from evonas_jax.checkpoint import load_pytree
from evonas_jax.finetune import finetune_lib
from evonas_jax.nn.cost import arch_cost
from evonas_jax.space import get_space
from helpers import ROOT, load_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from evonas_jax.trainer import train_and_evaluate
  root = tmp_path_factory.mktemp("finetune")
  tcfg = load_config("ci_tiny")
  tcfg.data.tfds_data_dir = str(root / "tfds")
  tcfg.teacher.source = "train"          # KD terms and projectors, as the official retrain
  tcfg.teacher.num_steps = 4
  tcfg.teacher.eval_every = 4
  tcfg.compile_cache_dir = "none"
  tcfg.tensorboard = False
  train_dir = str(root / "train")
  train_and_evaluate(tcfg, train_dir)
  space = get_space(tcfg.space, tcfg.preset)
  info = data_lib.dataset_info(tcfg.data)
  # A search front over that supernet (the search itself is tested elsewhere): two rows.
  scfg = load_config("search_quickstart")
  scfg.supernet_workdir = train_dir
  scfg.data = tcfg.data
  search_dir = root / "search"
  os.makedirs(search_dir)
  with open(search_dir / "config.json", "w") as f:
    f.write(scfg.to_json_best_effort(sort_keys=True))
  rows = []
  genomes = space.sample(11, 2)
  for i, g in enumerate(genomes):
    c = arch_cost(space, space.decode(g), info.image_shape, info.num_classes)
    rows.append({"genome": g.tolist(), "arch": space.decode(g).to_dict(), "generation": 1,
                 "accuracy": 0.4 + 0.1 * i, "error": 0.6 - 0.1 * i, "latency_ms": 1.0 + i,
                 "macs": int(c.macs), "params": int(c.params)})
  with open(search_dir / "pareto.json", "w") as f:
    json.dump({"pareto": rows}, f)

  ft = load_config("finetune_quickstart")
  ft.source = str(search_dir)
  ft.select = "latency_ms<=1.5"        # row 0 (rows: 1.0 and 2.0 ms)
  ft.num_steps, ft.eval_every, ft.checkpoint_every, ft.log_every = 4, 4, 2, 2
  ft.batch_size = 16
  ft.optimizer.weight_decay = 0.0      # so weights the subnet does not use stay bit-identical
  ft.optimizer.warmup_steps = 1
  ft.compile_cache_dir = "none"
  ft.tensorboard = False
  ft_dir = str(root / "ft")
  results = finetune_lib.finetune(ft, ft_dir)
  return dict(space=space, train_dir=train_dir, search_dir=str(search_dir), rows=rows,
              ft=ft, ft_dir=ft_dir, results=results, root=root)


def _flat(path):
  v = load_pytree(path)
  return (traverse_util.flatten_dict(jax.tree.map(np.asarray, v["params"]), sep="/"),
          traverse_util.flatten_dict(jax.tree.map(np.asarray, v["batch_stats"]), sep="/"))


def test_only_the_selected_subnet_is_trained(runs):
  space, genome = runs["space"], runs["rows"][0]["genome"]
  arch = space.decode(genome)
  before, _ = _flat(os.path.join(runs["train_dir"], "final"))
  after, _ = _flat(os.path.join(runs["ft_dir"], "final"))
  assert before.keys() == after.keys()
  off = [(s, b) for s, bits in enumerate(arch.depth) for b, on in enumerate(bits) if not on]
  on = [(s, b) for s, bits in enumerate(arch.depth) for b, on in enumerate(bits) if on]
  assert off and on, arch   # the sampled genome must exercise both cases
  for s, b in off:
    keys = [k for k in before if k.startswith(f"stage{s}_block{b}/")]
    assert keys
    for k in keys:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  changed = 0
  for s, b in on:
    pre = f"stage{s}_block{b}/"
    hidden = int(space.dims[s] * arch.mlp_ratio[s])
    k1 = pre + "mlp/fc1/kernel"
    # Hidden units beyond the subnet's MLP width: untouched; the used ones: trained.
    np.testing.assert_array_equal(after[k1][:, hidden:], before[k1][:, hidden:], err_msg=k1)
    np.testing.assert_array_equal(after[pre + "mlp/fc2/kernel"][hidden:],
                                  before[pre + "mlp/fc2/kernel"][hidden:])
    changed += int(not np.array_equal(after[k1][:, :hidden], before[k1][:, :hidden]))
  assert changed == len(on)
  # The task head is always part of the subnet.
  assert not np.array_equal(after["head/kernel"], before["head/kernel"])


def test_results_config_and_projectors(runs, capfd):
  r, ft_dir = runs["results"], runs["ft_dir"]
  sub = r["subnets"]["subnet"]
  assert list(r["subnets"]) == ["subnet"]
  assert sub["genome"] == runs["rows"][0]["genome"]
  assert 0.0 <= sub["before_val_acc"] <= 1.0 and 0.0 <= sub["val_acc"] <= 1.0
  # "before" is the supernet's subnet: the value the training run's own evaluator gives the
  # supernet weights is recorded at step 0, before any fine-tuning step was logged.
  rows = [json.loads(l) for l in open(os.path.join(ft_dir, "metrics.jsonl"))]
  assert rows[0]["step"] == 0 and "before_val_acc_subnet" in rows[0]
  assert [x["step"] for x in rows if "loss" in x] == [2, 4]
  cfg = json.load(open(os.path.join(ft_dir, "config.json")))
  assert cfg["fixed_subnet"] == runs["rows"][0]["genome"]
  assert cfg["init_from"] == runs["train_dir"] and cfg["teacher"]["source"] == "checkpoint"
  assert cfg["pst"]["enabled"] is False and cfg["num_steps"] == 4
  assert json.loads(cfg["finetune"]["objectives"])["latency_ms"] == 1.0


def test_projectors_start_from_the_supernet_checkpoint(runs):
  """The fine-tuning run's first checkpoint (step 2) holds projectors that moved from the
  supernet's last checkpoint by 2 steps, not from a fresh initialisation: closer to the
  supernet's than a fresh init is."""
  import orbax.checkpoint as ocp
  def proj(ckdir):
    step = max(int(d) for d in os.listdir(ckdir) if d.isdigit())
    st = ocp.StandardCheckpointer().restore(os.path.join(ckdir, str(step), "state"))
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, st["params"]["proj_spatial"]))
  sup = proj(os.path.join(runs["train_dir"], "checkpoints"))
  ft_ck = os.path.join(runs["ft_dir"], "checkpoints")
  first = min(int(d) for d in os.listdir(ft_ck) if d.isdigit())
  st = ocp.StandardCheckpointer().restore(os.path.join(ft_ck, str(first), "state"))
  ft = traverse_util.flatten_dict(jax.tree.map(np.asarray, st["params"]["proj_spatial"]))
  assert sup.keys() == ft.keys()
  # Adam moves each weight by at most ~lr per step: 2 steps at lr <= 5e-4 -> <= 1e-3 (+ slack).
  worst = max(float(np.max(np.abs(ft[k] - sup[k]))) for k in sup)
  assert worst <= 2e-3, worst


def test_export_without_select(runs, tmp_path):
  out = str(tmp_path / "exp")
  res = export_lib.export_subnet(runs["ft_dir"], None, out, platforms="cpu")
  assert res.meta["genome"] == runs["rows"][0]["genome"]
  after, _ = _flat(os.path.join(runs["ft_dir"], "final"))
  space = runs["space"]
  arch = space.decode(runs["rows"][0]["genome"])
  npz = np.load(os.path.join(out, "params.npz"))
  assert np.array_equal(npz["params/head/kernel"], after["head/kernel"])
  s, b = next((s, b) for s, bits in enumerate(arch.depth) for b, on in enumerate(bits) if on)
  hidden = int(space.dims[s] * arch.mlp_ratio[s])
  fc1 = [k for k in npz.files if k.endswith("mlp/fc1/kernel") and f"stage{s}" in k]
  assert fc1 and all(npz[k].shape[-1] == hidden for k in fc1)
  with pytest.raises(ValueError, match="--select is required"):
    export_lib.export_subnet(runs["train_dir"], None, str(tmp_path / "x"), platforms="cpu")


def test_bad_sources(runs, tmp_path):
  ft = finetune_lib.default_config()
  with pytest.raises(ValueError, match="config.source is empty"):
    finetune_lib.train_config(ft)
  ft.source = runs["search_dir"]
  ft.select = "latency_ms<0.5"
  with pytest.raises(ValueError, match=r"smallest latency_ms on the front is 1\b"):
    finetune_lib.train_config(ft)
  ft.select = "9"
  with pytest.raises(ValueError, match=r"allowed row indices 0\.\.1"):
    finetune_lib.train_config(ft)
  ft.select = ""
  ft.num_steps = 0
  with pytest.raises(ValueError, match=r"config.num_steps = 0 is not allowed"):
    finetune_lib.validate(ft)
  # A genome that does not fit the space, through the CLI: a message, no traceback.
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-m", "evonas_jax.finetune", "--config",
                      os.path.join(ROOT, "configs", "finetune_quickstart.py"), "--workdir",
                      str(tmp_path / "w"), f"--config.source={runs['train_dir']}",
                      "--config.select=1,0,1"], capture_output=True, text=True, env=env,
                     cwd=ROOT, timeout=120)
  assert p.returncode != 0
  assert "genome must have shape (28,)" in p.stderr and "Traceback" not in p.stderr
  assert not os.path.exists(tmp_path / "w")


def test_ship_sequence_at_ci_size(runs, tmp_path):
  """benchmarks/ship_quickstart.py (the documented select -> fine-tune -> ONNX + int8 ->
  onnxruntime latency sequence) on the tiny front: one budget (the slowest member's latency,
  i.e. the most accurate row), 2 steps. Its numbers are cross-checked against the files it
  wrote: the fine-tuned run's results.json and the export's arch.json."""
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime.quantization")
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "ship_quickstart", os.path.join(ROOT, "benchmarks", "ship_quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  # Budgets are member latencies (slowest, median, fastest); with two rows the median is the
  # fastest again (main() skips a genome it already fine-tuned).
  assert mod.budgets(runs["rows"], 3) == ["latency_ms<=2.0", "latency_ms<=1.0",
                                          "latency_ms<=1.0"]
  work, out = str(tmp_path / "ship"), str(tmp_path / "ship.json")
  res = mod.main(["--search", runs["search_dir"], "--work", work, "--members", "1",
                  "--steps", "2", "--batch_size", "16", "--int8_val_images", "64",
                  "--int8_max_drop", "1.0", "--compile_cache_dir", "none", "--out", out,
                  "--latency_json", str(tmp_path / "absent.json"),
                  "--dense_onnx_json", str(tmp_path / "absent.json")])
  saved = json.load(open(out))
  assert saved["finetune"] == res["finetune"] and len(saved["finetune"]) == 1
  f = saved["finetune"][0]
  assert f["pareto_row"] == 1 and f["genome"] == runs["rows"][1]["genome"]
  ft_res = json.load(open(os.path.join(work, "finetune_0", "results.json")))
  assert f["val_after"] == ft_res["subnets"]["subnet"]["val_acc"]
  assert f["val_before"] == ft_res["subnets"]["subnet"]["before_val_acc"]
  meta = json.load(open(os.path.join(work, "export_0", "arch.json")))
  assert meta["genome"] == f["genome"]
  i8 = meta["artifacts"]["int8"]
  assert saved["int8"]["metric_before"] == i8["metric_fp32"]
  assert saved["int8"]["latency_ms_int8"] == i8["latency_ms_int8"]["p50"] > 0
  assert (saved["onnx_max_abs_diff"]["classification"]
          == meta["artifacts"]["onnx"]["check"]["outputs"]["logits"]["max_abs_diff"] <= 1e-4)
  assert saved["lut_spearman"] is None
