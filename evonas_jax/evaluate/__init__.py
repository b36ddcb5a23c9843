"""Subnet evaluation shared by training, search and export.

`bn`: exact per-subnet BatchNorm statistics (reset, then the pooled mean and variance of each
BatchNorm input over a calibration set) and the one default calibration set size. Every
evaluator calls it: the trainer's masked-mode and compiled-engine evaluation
(`supernet_train.evaluate_task`, `engine.evaluate.EngineEvaluator`), the search fitness
(`dmmpe`: DMMPE, the data-parallel baseline and the engine pool) and export
(`export_lib.recalibrate`). The metric kernels are the task's `eval_stats` / `finalize`
(`evonas_jax.tasks`).
"""
from evonas_jax.evaluate.bn import (DEFAULT_CALIB_BATCH_SIZE, DEFAULT_CALIB_BATCHES,
                                    exact_batch_stats, exact_batch_stats_scan, recalibrated)

__all__ = ["DEFAULT_CALIB_BATCHES", "DEFAULT_CALIB_BATCH_SIZE", "exact_batch_stats",
           "exact_batch_stats_scan", "recalibrated"]
