"""Official EvoNAS / VSSD PyTorch checkpoints <-> evonas_jax variables.

keymap: the key table. convert_lib: the array conversions (from_official, to_official, remap).
state_dict_io: .safetensors / .npz / .pth files. pipeline: the file-level commands behind
`python -m evonas_jax.convert`.
"""
from evonas_jax.convert.convert_lib import Report, from_official, normalise_keys, to_official
from evonas_jax.convert.keymap import Row, table

__all__ = ["Report", "Row", "from_official", "normalise_keys", "table", "to_official"]
