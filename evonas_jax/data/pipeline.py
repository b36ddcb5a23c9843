"""grain pipelines from a random-access source to batches of numpy arrays.

Train: shard (strided, per host) -> shuffle (seeded, reshuffled each epoch)
-> repeat forever -> batch (drop remainder) -> read + augment the whole batch
at once (numpy, vectorised). Sharding happens before shuffling, so host k
always owns the examples k, k + P, k + 2P, ... and hosts never overlap.
The grain dataset is a stream of batch numbers; shuffle/repeat/batch are
computed per batch with numpy (one permutation per epoch) because grain's
per-element index chain cost ~5 ms per 128-example batch on 2 cores.

Eval: every example exactly once (per host: its strided shard); the last
batch is padded to the full batch size and a ``mask`` (1 = real, 0 = padding)
marks the padding, so every batch has the same static shape. With several
hosts every host yields the same number of batches (padding-only batches
where needed), so collectives stay in lock-step.

Only indices flow through grain; the records are fetched per batch with one
``source.__getitems__`` call. Everything is a function of (seed, position),
so `DataIterator.get_state()` is just a position and restoring it continues
with exactly the same batches.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import grain
import numpy as np

from evonas_jax.data import cache as cache_lib
from evonas_jax.data import preprocess as preprocess_lib

_STATE_VERSION = 1


def _mix_seed(seed: int) -> int:
    """Hashes the user seed into the 64-bit shuffle seed (separate stream from augmentation)."""
    bits = preprocess_lib.example_random_bits(seed, np.zeros(1, np.int64), np.zeros(1, np.int64), stream=0)
    return int(bits[0])


def _read(source: Any, indices: np.ndarray, image_key: str, label_key: str):
    """Fetches records -> (images: uint8 (B, H, W, C) array or list of arrays, labels int32 (B,))."""
    if isinstance(source, cache_lib.CachedArraySource):
        images, labels = source.read(indices)
        return images, labels.astype(np.int32)
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    records = getitems(keys) if getitems is not None else [source[k] for k in keys]
    images = [np.asarray(r[image_key]) for r in records]
    labels = np.asarray([r[label_key] for r in records], dtype=np.int32)
    if images and len({im.shape for im in images}) == 1:
        images = np.stack(images)
        if images.ndim == 3:  # (B, H, W) grayscale without a channel axis.
            images = images[..., None]
    return images, labels


class _TrainIndices:
    """Batch number -> (global example indices (B,), epochs (B,)) of one host.

    Position p of the host's infinite stream is example perm_e[p % n_local]
    of its shard in epoch e = p // n_local, where perm_e is a permutation
    drawn from (seed, e): shuffled, reshuffled every epoch, repeated forever,
    batched with drop_remainder (batches may straddle epochs).
    """

    def __init__(self, n: int, batch_size: int, seed: int, process_index: int, process_count: int):
        self.batch_size, self.seed = batch_size, seed
        self.pi, self.pc = process_index, process_count
        self.n_local = len(range(process_index, n, process_count))
        # Per instance (a class-level cache would be shared by all iterators);
        # a batch usually spans one or two epochs.
        self._perm = functools.lru_cache(maxsize=4)(self._draw_perm)

    def _draw_perm(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([_mix_seed(self.seed), epoch])
        return rng.permutation(self.n_local)

    def __call__(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        pos = b * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, j = np.divmod(pos, self.n_local)
        local = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            local[sel] = self._perm(int(e))[j[sel]]
        return self.pi + local * self.pc, epochs


class _TrainBatch:
    """grain map: batch number -> {"image", "label"[, "index"]}."""

    def __init__(self, indices_fn, source, preproc, seed, image_key, label_key, return_index):
        self.indices_fn, self.source, self.preproc, self.seed = indices_fn, source, preproc, seed
        self.image_key, self.label_key, self.return_index = image_key, label_key, return_index

    def __call__(self, b: int):
        indices, epochs = self.indices_fn(b)
        images, labels = _read(self.source, indices, self.image_key, self.label_key)
        out = {"image": self.preproc.train(images, indices, epochs, self.seed), "label": labels}
        if self.return_index:
            out["index"] = np.asarray(indices, np.int64)
        return out


class _EvalBatch:
    """grain map: batch number -> padded {"image", "label", "mask"[, "index"]}."""

    def __init__(self, source, preproc, local_indices, batch_size, image_key, label_key, return_index):
        self.source, self.preproc = source, preproc
        self.local_indices, self.batch_size = local_indices, batch_size
        self.image_key, self.label_key, self.return_index = image_key, label_key, return_index

    def __call__(self, b: int):
        bs = self.batch_size
        idx = self.local_indices[b * bs:(b + 1) * bs]
        n = len(idx)
        s, c = self.preproc.image_size, self.preproc.channels
        image = np.zeros((bs, s, s, c), np.float32)
        label = np.zeros((bs,), np.int32)
        mask = np.zeros((bs,), np.float32)
        if n:
            images, labels = _read(self.source, idx, self.image_key, self.label_key)
            image[:n] = self.preproc.eval(images)
            label[:n] = labels
            mask[:n] = 1.0
        out = {"image": image, "label": label, "mask": mask}
        if self.return_index:
            index = np.full((bs,), -1, np.int64)
            index[:n] = idx
            out["index"] = index
        return out


class DataIterator:
    """Checkpointable iterator of batches (dicts of numpy arrays).

    ``state = it.get_state()`` is a small JSON-serialisable dict; a fresh
    iterator over the same data and arguments continues with exactly the same
    batches after ``set_state(state)``. The state records the pipeline
    arguments and refuses to restore into a different pipeline (that would
    silently change the data).

    Attributes:
      batch_size: examples per batch.
      num_batches: batches per pass (eval; None for the infinite train stream).
      steps_per_epoch: full batches per epoch of this host's shard (train).
      num_examples: examples this host reads per pass (its shard).
      dataset: the underlying grain.MapDataset of batches.
    """

    def __init__(self, dataset: grain.MapDataset, *, kind: str, fingerprint: dict, batch_size: int,
                 num_examples: int, num_batches: int | None = None, steps_per_epoch: int | None = None,
                 num_threads: int = 2, prefetch: int = 4):
        self.dataset = dataset
        self.kind = kind
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.num_examples = num_examples
        self.num_batches = num_batches
        self.steps_per_epoch = steps_per_epoch
        # Threads prefetch whole batches; order and content stay deterministic
        # because each batch is a pure function of its position.
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._it = dataset.to_iter_dataset(options).__iter__()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the train iterator is infinite; use steps_per_epoch")
        return self.num_batches

    def get_state(self) -> dict:
        """JSON-serialisable position + pipeline fingerprint."""
        return {"version": _STATE_VERSION, "kind": self.kind, "fingerprint": dict(self.fingerprint),
                "grain": self._it.get_state()}

    def set_state(self, state: dict) -> None:
        """Continues from `state` (from `get_state` of an identical pipeline)."""
        if state.get("version") != _STATE_VERSION or state.get("kind") != self.kind:
            raise ValueError(f"iterator state is for kind={state.get('kind')!r} version={state.get('version')!r}, "
                             f"this is kind={self.kind!r} version={_STATE_VERSION}")
        theirs = state.get("fingerprint", {})
        diff = {k: (theirs.get(k), v) for k, v in self.fingerprint.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(f"iterator state belongs to a different pipeline; mismatched (saved, current): {diff}")
        self._it.set_state(state["grain"])


def _check_shard(process_index: int | None, process_count: int | None, n: int) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # Lazy: only when the caller wants the jax defaults.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count; got {process_index}, {process_count}")
    if n < process_count:
        raise ValueError(f"{n} examples cannot be sharded over {process_count} hosts")
    return int(process_index), int(process_count)


def train_iterator(
    source: Any,
    preproc: preprocess_lib.Preprocessor,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    num_threads: int = 2,
    prefetch: int = 4,
    return_index: bool = False,
) -> DataIterator:
    """Infinite, shuffled, augmented training batches for this host.

    Args:
      source: random-access source (len, [i], optionally __getitems__) of
        dicts with an image (uint8 (H, W, C) or (H, W)) and an int label.
      preproc: preprocessing/augmentation settings.
      batch_size: per-host batch size B.
      seed: same seed -> identical batches; augmentation is keyed by
        (seed, example index, epoch).
      process_index, process_count: host shard; default jax.process_index()
        and jax.process_count().
      image_key, label_key: record keys.
      num_threads, prefetch: grain read threads and prefetched batches.
      return_index: also return "index" int64 (B,) global example indices.

    Returns:
      DataIterator of {"image": float32 (B, S, S, C), "label": int32 (B,)}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = len(source)
    pi, pc = _check_shard(process_index, process_count, n)
    # Shard BEFORE shuffling: host pi owns the fixed disjoint subset pi::pc.
    indices_fn = _TrainIndices(n, batch_size, seed, pi, pc)
    n_local = indices_fn.n_local
    ds = grain.MapDataset.range(sys.maxsize).map(  # Infinite stream of batch numbers.
        _TrainBatch(indices_fn, source, preproc, seed, image_key, label_key, return_index))
    fingerprint = {"num_examples": n, "batch_size": batch_size, "seed": int(seed),
                   "process_index": pi, "process_count": pc}
    return DataIterator(ds, kind="train", fingerprint=fingerprint, batch_size=batch_size, num_examples=n_local,
                        steps_per_epoch=n_local // batch_size, num_threads=num_threads, prefetch=prefetch)


def eval_iterator(
    source: Any,
    preproc: preprocess_lib.Preprocessor,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    image_key: str = "image",
    label_key: str = "label",
    num_threads: int = 2,
    prefetch: int = 4,
    return_index: bool = False,
) -> DataIterator:
    """One pass over `source` (this host's shard), no augmentation, padded last batch.

    Every host gets ceil(ceil(N / P) / B) batches. Default: one host sees all.

    Returns:
      DataIterator of {"image": float32 (B, S, S, C), "label": int32 (B,),
      "mask": float32 (B,)} (+ "index" int64 (B,), -1 for padding, if
      `return_index`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = len(source)
    pi, pc = _check_shard(process_index, process_count, n)
    local = np.arange(pi, n, pc, dtype=np.int64)
    num_batches = math.ceil(math.ceil(n / pc) / batch_size)
    ds = grain.MapDataset.range(num_batches).map(
        _EvalBatch(source, preproc, local, batch_size, image_key, label_key, return_index))
    fingerprint = {"num_examples": n, "batch_size": batch_size, "process_index": pi, "process_count": pc}
    return DataIterator(ds, kind="eval", fingerprint=fingerprint, batch_size=batch_size, num_examples=len(local),
                        num_batches=num_batches, num_threads=num_threads, prefetch=prefetch)
