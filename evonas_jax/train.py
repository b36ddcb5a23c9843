"""Train the supernet: python -m evonas_jax.train --config configs/quickstart.py --workdir DIR

Any config field can be overridden: --config.num_steps=100 --config.data.source=digits.
"""
from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config.json, metrics.jsonl, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from evonas_jax.supernet_train import train_and_evaluate
  train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
