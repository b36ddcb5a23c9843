"""Fine-tuning ("OFA retrain") of one searched subnet: `python -m evonas_jax.finetune`."""
from evonas_jax.finetune.finetune_lib import default_config, finetune, resolve_source, train_config

__all__ = ["default_config", "finetune", "resolve_source", "train_config"]
