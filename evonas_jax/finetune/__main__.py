"""Fine-tune a searched subnet from its supernet weights (the official "OFA retrain").

  python -m evonas_jax.finetune --config configs/finetune_quickstart.py --workdir W \
      --config.source=SEARCH_DIR --config.select="latency_ms<=2.5"

--config.source: a search workdir (select: a pareto row, a genome, or a budget), an export
folder (its subnet; no select) or a training workdir (select: a genome). Rerunning the same
command resumes. Then `python -m evonas_jax.export --workdir W` exports the fine-tuned subnet.
"""
from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/finetune_*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config.json, metrics.jsonl, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from evonas_jax.finetune import finetune_lib
  f = flags.FLAGS
  try:
    finetune_lib.validate(f.config)
    cfg = finetune_lib.train_config(f.config)   # bad source / select / genome: a message
    from evonas_jax import train_config
    train_config.validate_train_config(cfg)
    train_config.check_workdir(f.workdir)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
          PermissionError) as e:
    raise app.UsageError(str(e)) from None
  finetune_lib.finetune(f.config, f.workdir)


if __name__ == "__main__":
  # An unknown --config.<field> is a one-line usage error naming it, not a traceback.
  from evonas_jax.train_config import config_flags_parser
  app.run(main, flags_parser=config_flags_parser)
