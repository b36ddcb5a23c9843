"""ImageNet-1k at official EvoNAS scale: base preset (dims 64/128/256/512, 28 genes), 224x224.

Command (one host, 8 GPUs):
  python -m evonas_jax.prepare ...   # not needed: uses a TFDS imagenet2012 you have prepared
  python -m evonas_jax.train --config configs/imagenet.py --workdir $WORK/imagenet \
      --config.data.tfds_data_dir=$TFDS_DIR
Multi-host (SLURM): sbatch --nodes=4 launch/slurm.sbatch configs/imagenet.py $WORK/imagenet
Hardware: 8x H100 per host; global batch 1024; bf16 compute with fp32 master params.
Teacher: a ViT you trained before (teacher.source="checkpoint", teacher.checkpoint=<dir>), or
  trained here first (teacher.source="train": ~a ViT-S/16 budget, 300 epochs on 8 GPUs, about
  2-3 days); 1024-d ViT-L features as in the paper need a foundation teacher: precompute them
  with evonas_jax.teacher_store.
Expected time: the supernet stage is 140 official PST epochs over 1.28 M images; at an estimated
  ~9k img/s on 8 H100 (not measured: no GPU run yet) about 6 days per host, proportionally less
  on more hosts. Expected accuracy: the paper reports none for ImageNet supernet pretraining (its
  stage-1 recipe is absent from the official repo, research §3.5); VSSD-T-sized subnets should
  approach VSSD-T's 83.7% top-1 after retraining.
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.preset = "base"
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.crop_padding = 0
  c.data.random_flip = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.val_split = "train[-10000:]"     # search/selection never touch the official val set
  c.data.train_split = "train[:-10000]"
  c.data.test_split = "validation"
  c.data.cache_max_mb = 0
  c.batch_size = 1024
  c.eval_batch_size = 1000
  steps_per_epoch = 1271167 // 1024
  c.num_steps = 140 * steps_per_epoch     # the 140 official PST epochs
  c.log_every = 100
  c.eval_every = 5 * steps_per_epoch
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.compute_dtype = "bfloat16"
  c.drop_path_rate = 0.1
  c.bn_calibration_batches = 50
  c.pst.stages = ()
  c.pst.k_max = 4
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 5 * steps_per_epoch
  c.optimizer.restart_per_stage = True
  c.teacher.source = "checkpoint"
  c.teacher.checkpoint = ""               # set: --config.teacher.checkpoint=<teacher>/teacher/final
  c.teacher.model.update(dict(patch_size=16, dim=384, depth=12, heads=6, mlp_ratio=4.0))
  c.distill.kd_ratio = 0.5
  c.distill.projector.update(dict(num_heads=16, ffn_ratio=4))
  c.parallel.data_sharding = "per_host"
  return c
