"""The training split on the accelerator (`DataConfig.on_device`): batches drawn inside the step.

On a fast accelerator a small model trains faster than a host pipeline can shuffle, roll and
copy waveforms to it. Here the whole split lives on the device once, as int16 waveforms with one
float32 scale per clip (peak / 32767: the error is at most half a step of 2^-15 of the clip's
peak, below a 16-bit wav's own quantisation step), and
`batch_at(split, step)` builds the step's batch there:

  epoch order = permutation(fold_in(key, epoch)), batch = its slice at the step's position,
  roll shift  = RollConfig.sample(fold_in(key', step)), or the teacher store's view's shift,
  view        = uniform in [0, V) per clip (a teacher store's stored views), as the host does.

Everything is a pure function of the step number, so a resumed run continues exactly and needs
no iterator state. The order and the draws are not the grain pipeline's (a different generator):
an on-device run is reproducible, not bit-identical to the same config on the host pipeline
(config.json records `data.on_device`, so the two never resume each other).

Not supported on device (refused with a message): the device-IR augmentation (its IR bank and
convolution are host code) and multi-process runs (each process would hold the whole split).
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from asc_jax.audio import augment
from asc_jax.data.sources import ClipSource

log = logging.getLogger(__name__)

INT16_MAX = 32767
# Streams of the data key: the epoch permutations use fold_in(key, epoch) directly; these keep
# the per-step draws apart from them.
_ROLL_STREAM, _VIEW_STREAM = 0x524F4C4C, 0x56494557


@flax.struct.dataclass
class DeviceSplit:
    """One training split as arrays (host numpy from `load`, device arrays after `device_put`).

    Attributes:
      audio: (N, T) int16, clip i = audio[i] * scale[i].
      scale: (N,) float32.
      label: (N,) int32.
      extras: per-clip stored views, leaves (N, V, ...): {"teacher_logits": (N, V, K, C),
        "aug": {name: {field: (N, V)}}} for a teacher store, else {}.
    """

    audio: Any
    scale: Any
    label: Any
    extras: Any

    @property
    def num_clips(self) -> int:
        return int(self.label.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in jax.tree.leaves(self))


def quantize_int16(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) float waveforms -> (int16 (N, T), float32 scale (N,)) with audio ~= q * scale.

    The scale is each clip's peak / 32767, so nothing clips and a silent clip stays zero.
    """
    peak = np.abs(audio).max(axis=-1).astype(np.float32)
    scale = np.where(peak > 0, peak / INT16_MAX, 1.0).astype(np.float32)
    q = np.rint(audio / scale[:, None]).clip(-INT16_MAX, INT16_MAX).astype(np.int16)
    return q, scale


def load(source: ClipSource, extras=None, *, threads: int = 8) -> DeviceSplit:
    """Reads (decode + resample, in `threads` threads) every clip of `source` into a host
    DeviceSplit; `extras` is the run's teacher-store hook (`distill.StoreExtras`) or None.

    Raises:
      BadClipError / OSError from `ClipSource.audio`, naming the clip (as the host pipeline).
    """
    # A reader without the float32 cache: the int16 copy is the only one this path keeps.
    source = source.subset(range(len(source)), cache=False)
    n = len(source)
    audio = np.empty((n, source.num_samples), np.int16)
    scale = np.empty((n,), np.float32)

    def read(i: int) -> None:
        q, s = quantize_int16(source.audio(i)[None])
        audio[i], scale[i] = q[0], s[0]

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(read, range(n)))  # list(): re-raises the first failure
    label = np.array([c.label for c in source.clips], np.int32)
    stored = {} if extras is None else extras.all_views()
    split = DeviceSplit(audio, scale, label, stored)
    log.info("training split on device: %d clips, %.1f MB (int16 audio%s)", n, split.nbytes / 2**20,
             " + teacher views" if stored else "")
    return split


def check_supported(config) -> None:
    """Refuses what `data.on_device` cannot do (called before the run records its config)."""
    if config.augment.dir is not None:
        raise ValueError("data.on_device does not support the device-IR augmentation (augment.dir): its "
                         "convolution runs in the host pipeline; set data.on_device=False or augment.dir=None")
    if jax.process_count() > 1:
        raise ValueError("data.on_device is single-process only (every process would hold the whole "
                         f"split); this run has {jax.process_count()} processes")


def batch_at(split: DeviceSplit, step: jax.Array, *, key: jax.Array, batch_size: int,
             roll: augment.RollConfig | None, sr: int) -> dict:
    """The training batch of optimiser step `step` (traced), as the host pipeline's dict:
    {"audio" (B, T) float32 rolled, "label", "index", "roll"} plus "teacher_logits" and "aug"
    of one stored view per clip when the split carries a teacher store.

    Epochs are whole permutations of the split; the last partial batch of each is dropped, as
    the host pipeline drops it (steps per epoch = N // batch_size).
    """
    n = split.num_clips
    steps_per_epoch = n // batch_size
    epoch, position = jnp.divmod(step, steps_per_epoch)
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    index = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
    audio = split.audio[index].astype(jnp.float32) * split.scale[index, None]
    batch = {"label": split.label[index], "index": index.astype(jnp.int32)}
    stored_aug = {}
    if split.extras:
        views = jax.tree.leaves(split.extras)[0].shape[1]
        view = jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, _VIEW_STREAM), step),
                                  (batch_size,), 0, views)
        picked = jax.tree.map(lambda a: a[index, view], split.extras)
        batch.update(picked)
        stored_aug = picked.get("aug", {})
    if "roll" in stored_aug:
        shift = stored_aug["roll"]["shift"].astype(jnp.int32)
    elif roll is not None:
        shift = roll.sample(jax.random.fold_in(jax.random.fold_in(key, _ROLL_STREAM), step), batch_size, sr)["shift"]
    else:
        shift = jnp.zeros((batch_size,), jnp.int32)
    batch["audio"] = augment.roll_waveform(audio, shift)
    batch["roll"] = shift
    return batch
