"""NYU-Depth v2 (480x640, max 10 m, Eigen crop): dense CA-DDKD supernet at the official scale, for GPUs.

Command:  build the TFDS dataset once (array_record; see
          evonas_jax/data/dense.py, dataset "nyu_depth_v2"), then
          python -m evonas_jax.train --config configs/nyu_depth.py --workdir workdirs/nyu_depth \
            --config.data.tfds_data_dir=/path/to/tensorflow_datasets
          and search it with configs/search_dense.py (--config.supernet_workdir=workdirs/nyu_depth).
Hardware: 8 GPUs (H100 class), multi-host via launch/slurm.sbatch; a CPU cannot run it.
Expected: NOT measured here (no GPU and no dataset on the development machine). Scale: the
          official supernet runs PST for 140 epochs (depth) / 870k iterations (ADE20K) with a
          large frozen teacher (research/evonas.md §3.4, §6); this config keeps the official
          loss weights (research §3.3: λ=0.1, α1=0.08, α2=0.06) and the official 8 PST
          stages. The ViT teacher here is trained from scratch by stage 1 unless
          teacher.source="checkpoint" or "store" (precomputed features of a foundation model,
          evonas_jax.teacher_store) is set, which is what the paper does.
"""
from evonas_jax.data.dense import dense_config_defaults
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.task = "depth"
  c.data = dense_config_defaults("nyu_depth_v2")
  c.preset = "base"
  c.batch_size = 16
  c.eval_batch_size = 8
  c.num_steps = 100_000
  c.log_every = 100
  c.eval_every = 5_000
  c.checkpoint_every = 2_000
  c.bn_calibration_batches = 8
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 1_000
  c.optimizer.restart_per_stage = True
  c.pst.stages = ()                   # the official 8 stages, scaled to num_steps
  c.pst.k_max = 4
  c.drop_path_rate = 0.2
  c.distill.kd_ratio = 0.1
  c.distill.alpha_spatial = 0.08
  c.distill.alpha_frequency = 0.06
  c.distill.reduction = "sum"
  c.distill.student_stage = -1
  c.teacher.num_steps = 50_000
  c.teacher.eval_every = 5_000
  c.teacher.model.update(dict(patch_size=16, dim=768, depth=12, heads=12))
  c.teacher.optimizer.lr = 1e-4
  c.teacher.optimizer.warmup_steps = 2_000
  return c
