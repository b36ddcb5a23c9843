"""Search spaces: genome <-> Arch, validation, sampling, counting, masked-mode encoding."""
from evonas_jax.space.arch import BLOCK_TYPES, Arch
from evonas_jax.space.evonas import (D_STATE_CHOICES, EXPAND_CHOICES, MLP_CHOICES, PRESETS, Gene,
                                     SearchSpace, get_space, official_size)
from evonas_jax.space.masks import arch_masks, genome_to_masks, stack_masks

__all__ = [
    "Arch", "BLOCK_TYPES", "Gene", "SearchSpace", "get_space", "official_size", "PRESETS",
    "MLP_CHOICES", "D_STATE_CHOICES", "EXPAND_CHOICES", "arch_masks", "genome_to_masks",
    "stack_masks",
]
