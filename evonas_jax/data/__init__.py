"""Real image-classification data for evonas_jax, read through TFDS + grain.

Typical use (``cfg.data`` from `get_config_defaults`)::

    from evonas_jax import data
    info = data.dataset_info(cfg.data)             # prepares TFDS on first use
    train = data.train_iterator(cfg.data, batch_size=128, seed=0)
    batch = next(train)    # {"image": f32 (128, S, S, C), "label": i32 (128,)}
    state = train.get_state()                      # JSON-serialisable
    for batch in data.eval_iterator(cfg.data, "validation", 256):
        ...                # + "mask": f32 (256,), 0 marks padding

Sources: "fashion_mnist" (Debian package dataset-fashion-mnist; falls back
loudly to "digits" if allowed), "digits" (scikit-learn, always present) and
"tfds" (any dataset prepared as array_record, e.g. cifar10, imagenet2012).
Local sources become the TFDS datasets ``evonas_fashion_mnist`` /
``evonas_digits``; build them ahead of time with ``python -m
evonas_jax.prepare --source fashion_mnist --tfds_data_dir DIR``.

Modules: `idx` (IDX reader), `sources` (local numpy sources + fallback),
`splits` (deterministic stratified holdouts), `tfds_prepare` (write TFDS),
`tfds_source` (read TFDS), `preprocess` (vectorised numpy transforms),
`pipeline` (grain iterators), `config` (defaults + validation), `api`.
"""

from evonas_jax.data.api import DatasetInfo
from evonas_jax.data.api import dataset_info
from evonas_jax.data.api import eval_iterator
from evonas_jax.data.api import get_config_defaults
from evonas_jax.data.api import open_split
from evonas_jax.data.api import prepare_if_needed
from evonas_jax.data.api import train_iterator
from evonas_jax.data.config import DataSpec
from evonas_jax.data.config import validate as validate_config
from evonas_jax.data.pipeline import DataIterator

__all__ = [
    "DataIterator",
    "DataSpec",
    "DatasetInfo",
    "dataset_info",
    "eval_iterator",
    "get_config_defaults",
    "open_split",
    "prepare_if_needed",
    "train_iterator",
    "validate_config",
]
