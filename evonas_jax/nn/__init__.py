"""Layers, blocks and the VSS-ViT supernet (masked mode) / subnet (sliced mode)."""
from evonas_jax.nn.block import MIXERS, Block, BlockSpec, Widths, register_mixer
from evonas_jax.nn.supernet import (EvoNet, NetSpec, extract_subnet, init_supernet, sliced_apply,
                                    subnet_model, subnet_spec, supernet_spec)

__all__ = ["MIXERS", "Block", "BlockSpec", "Widths", "register_mixer", "EvoNet", "NetSpec",
           "extract_subnet", "init_supernet", "sliced_apply", "subnet_model", "subnet_spec",
           "supernet_spec"]
