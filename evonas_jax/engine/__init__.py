"""The compiled supernet engine: train and evaluate a subnet at its own cost.

`CompiledBackbone` runs an EvoNet backbone as host-composed compiled pieces at the sampled
subnet's widths (skipped blocks are not run); `EngineTrainStep` is the supernet train step on it
(drop-in for the masked `steps.ShardedTrainStep`); `EngineEvaluator` evaluates subnets on it
(BatchNorm recalibration + task metrics). Masked mode stays the reference and the mode for
vmapping many archs at once (proxies, grouped evaluation).
"""
from evonas_jax.engine.backbone import CompiledBackbone
from evonas_jax.engine.evaluate import EngineEvaluator
from evonas_jax.engine.step import EngineTrainStep

from evonas_jax.train_config import ENGINES

__all__ = ["CompiledBackbone", "EngineEvaluator", "EngineTrainStep", "ENGINES"]
