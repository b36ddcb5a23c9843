"""Fine-tune ("OFA retrain") a subnet found by the quickstart search, from its supernet weights.

Command:  python -m evonas_jax.finetune --config configs/finetune_quickstart.py \
            --workdir workdirs/finetune_quickstart \
            --config.source=workdirs/quickstart/search --config.select="latency_ms<=0.5"
          then: python -m evonas_jax.export --workdir workdirs/finetune_quickstart \
                  --formats jax_export,onnx
Hardware: 2 CPU cores, no GPU.
Expected: measured on the quickstart supernet (benchmarks/results/ship_quickstart.json): 300
          steps of one subnet in a few minutes; validation accuracy before -> after for three
          front members is recorded there.

Why these settings: the official retrain keeps the supernet's losses (task CE + output KD +
spatial/frequency feature KD from the same teacher) with a much lower learning rate than the
supernet's (depth: 5e-5 against a supernet LR of 2e-4 at batch 16); the quickstart supernet
trained at 2e-3 with batch 128, so 5e-4 with a short warm-up is the same quarter-ish ratio.
300 steps at batch 128 is ~0.7 epoch of Fashion-MNIST, half the supernet's run.
"""
from evonas_jax.finetune import default_config


def get_config():
  c = default_config()
  c.num_steps = 300
  c.eval_every = 150
  c.checkpoint_every = 100
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_steps = 20
  return c
