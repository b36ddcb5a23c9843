"""The main job end to end on real data (scikit-learn digits, tiny preset): teacher stage, then
CA-DDKD supernet training with PST, outputs, and refusal to overwrite."""
import json
import os

import numpy as np
import pytest
from helpers import load_config, use_digits

from evonas_jax.trainer import train_and_evaluate


def _config(tmp_path, steps=40):
  c = use_digits(load_config("quickstart"), tmp_path)
  c.batch_size = 64
  c.eval_batch_size = 200
  c.num_steps = steps
  c.log_every = 5
  c.eval_every = 20
  c.optimizer.warmup_steps = 5
  c.bn_calibration_batches = 5
  c.teacher.num_steps = 60
  c.teacher.eval_every = 60
  c.teacher.optimizer.warmup_steps = 5
  c.teacher.model.update(dict(patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0))
  c.distill.projector.update(dict(num_heads=2, ffn_ratio=2))
  c.distill.student_stage = 1   # 2x2 grid at 16x16 input
  c.pst.stages = ("maxnet", "depth")
  c.pst.k_max = 1
  return c


def test_train_quickstart_on_digits(tmp_path, capsys):
  cfg = _config(tmp_path)
  wd = str(tmp_path / "run")
  res = train_and_evaluate(cfg, wd)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 8
  # Every CA-DDKD term is live and logged with the lr and throughput.
  for k in ("ce", "kd", "spatial", "frequency", "lr", "images_per_s"):
    assert all(np.isfinite(r[k]) for r in rows if "loss" in r), k
  first = [r for r in rows if "loss" in r][0]    # rows before it are the teacher stage's
  assert first["kd"] > 0 and first["spatial"] > 0 and first["frequency"] > 0
  # The teacher stage ran first and learned. Its validation split is 200 images, exactly 20 per
  # class (stratified), so a classifier whose output ignores the image scores 0.1 on average
  # (a constant one exactly 0.1), with standard deviation <= sqrt(0.1 * 0.9 / 200) = 0.021.
  # 0.16 is ~3 sd above that. Measured with this config (8 CPU devices): 0.225 for seed 0 (the
  # test's) and 0.28 for seed 1, so the bound leaves a margin of 13 images.
  assert res["teacher_val_acc"] > 0.16, res["teacher_val_acc"]
  assert any("teacher_loss" in r for r in rows)
  # Real learning: loss falls and the largest subnet beats chance (10 classes) clearly (2x
  # chance after 40 steps; measured 0.255-0.375 over seeds 0 and 1, both engines, 1 and 8 devices).
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
  assert res["subnets"]["largest"]["val_acc"] > 0.2, res["subnets"]["largest"]   # chance is 0.1
  # Not asserted: the smallest subnet beating chance. Here it is only trained through the last
  # 15 steps (the depth stage draws random widths and depths, never exactly the smallest), and
  # on 8 devices it measured 0.26 / 0.125 with the masked engine and 0.185 / 0.09 with the
  # compiled one (seeds 0 / 1): a coin flip around the old 0.2 bar, whatever the engine. Its
  # evaluation must still run and give a valid accuracy.
  assert 0.0 <= res["subnets"]["smallest"]["val_acc"] <= 1.0, res["subnets"]["smallest"]
  assert res["subnets"]["largest"]["macs"] > res["subnets"]["smallest"]["macs"]
  for f in ("config.json", "results.json", "metrics.png", "final", "teacher/final", "checkpoints"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert "largest" in capsys.readouterr().out
  # A finished run is never overwritten, and a different config is refused.
  with pytest.raises(FileExistsError, match="finished run"):
    train_and_evaluate(cfg, wd)
  cfg.num_steps = 41
  with pytest.raises(FileExistsError, match="different config.*num_steps"):
    train_and_evaluate(cfg, wd)
