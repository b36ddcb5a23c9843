"""Dense-prediction decoders on the EvoNet backbone (research/evonas.md §2.7): StripPooling neck,
Spatial-Mamba block, depth decoder, Mamba-FPN + UPer segmentation head with an aux FCN."""
from evonas_jax.nn.heads.depth import DepthDecoder
from evonas_jax.nn.heads.registry import HEADS, get_head, head_class, head_config_keys, register_head
from evonas_jax.nn.heads.segmentation import MambaFPN, SegmentationHead
from evonas_jax.nn.heads.spatial_mamba import (SASSM, SpatialMambaBlock, StateFusion,
                                               replicate_dwconv, scan_hidden_states)
from evonas_jax.nn.heads.strip_pooling import StripPooling, StripPoolingNeck

__all__ = ["HEADS", "get_head", "head_class", "head_config_keys", "register_head",
           "DepthDecoder", "SegmentationHead", "MambaFPN", "SASSM", "SpatialMambaBlock",
           "StateFusion", "replicate_dwconv", "scan_hidden_states", "StripPooling",
           "StripPoolingNeck"]
