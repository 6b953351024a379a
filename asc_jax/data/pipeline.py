"""Waveform input pipeline on grain: clips -> shuffled, augmented, batched numpy dicts.

Training (DESIGN rule 9):

  MapDataset.source(ClipSource).seed(seed).shuffle().repeat(num_epochs)
    .random_map(AttachExtra)?.random_map(WaveAugment).batch(B, drop_remainder=True)
    .to_iter_dataset(ReadOptions)  [.mp_prefetch(MultiprocessingOptions)]

yields {"audio": (B, T) float32, "label": (B,) int32, "index": (B,) int32, "roll": (B,) int32}
plus "dir": (B,) int32 when DIR is enabled, plus any extra fields. `index` is the clip's
position in the split's clip list, so per-clip data stored elsewhere (teacher logits) can be
attached later; `roll` is the circular shift applied, in samples; `dir` the index of the device
IR the clip was convolved with (-1: none). Random transforms are seeded per element index, so
`iter(ds).get_state()` / `set_state()` resume the stream exactly; store the state in the
checkpoint.

Evaluation (DESIGN rule 8): `eval_batches` pads the last batch to a static shape and returns
a `mask`, so every clip is counted exactly once.

Both read a `asc_jax.data.sources.ClipSource` (decoding, resampling, cache, up-front checks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from asc_jax.audio import augment, impulse
from asc_jax.data.sources import ClipSource
from asc_jax.data.tau import Clip

# extra(index, rng) -> {name: array or nested dict of arrays}: per-clip fields merged into each
# training record, e.g. `distill.StoreExtras` or `lambda i, rng: {"teacher_logits": L[i]}`.
# Leaves must have the same shape for every index (they are stacked into the batch). rng is
# the element's own generator, for random choices (e.g. one of several stored views) that
# must stay reproducible on resume. With worker_count > 0 it must pickle (no lambdas).
# When the extras carry a stored roll ({"aug": {"roll": {"shift"}}}, a teacher store's view) or
# a stored device IR ({"aug": {"dir": {"ir"}}}), WaveAugment applies those instead of drawing
# them, so the student hears what the teacher heard.
ExtraFn = Callable[[int, np.random.Generator], dict[str, Any]]

BASE_KEYS = ("audio", "label", "index", "roll")

@dataclass(frozen=True)
class WaveAugment(grain.transforms.RandomMap):
    """The waveform augmentations of one clip at `sr` Hz: device IR (`augment.DIRConfig`), then
    the roll (`augment.RollConfig`); their draws and ops are the configs'. `roll` None rolls by 0
    and `dir` None convolves nothing, unless a teacher store gives the parameters.

    One transform rather than two: grain seeds each random map by its place in the pipeline, so
    a second map would change every roll of a stream. The roll is drawn first, so enabling DIR
    leaves a seed's shifts as they were; DIR is applied first (CPJKU's order).

    Attributes:
      irs: the IR bank of `dir` at `sr` (`dir.load(sr)`), loaded once, pickled into workers.
      devices: the recording device of each clip of the source, by record `index`.
    """

    roll: augment.RollConfig | None
    sr: int
    dir: augment.DIRConfig | None = None
    irs: impulse.IRBank | None = None
    devices: tuple[str, ...] = field(default=(), repr=False)  # one per clip: kept out of the repr

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        # A teacher-logit store fixes what its teacher saw (attached by AttachExtra first).
        stored = element.get("aug", {})
        if "roll" in stored:
            shift = int(stored["roll"]["shift"])
        else:
            shift = 0 if self.roll is None else self.roll.sample_host(rng, self.sr)
        audio, fields = element["audio"], {}
        if "dir" in stored and self.dir is None:
            raise ValueError(f"clip {int(element['index'])} carries a stored device-IR index (a teacher "
                             "store's view) but this pipeline has no DIR (augment.dir is None)")
        if self.dir is not None:
            if "dir" in stored:
                ir = int(stored["dir"]["ir"])
            else:
                ir = self.dir.sample_host(rng, self.devices[int(element["index"])], len(self.irs))
            audio = self.dir.apply(audio, {"ir": ir}, self.irs)
            fields["dir"] = np.int32(ir)
        audio = augment.roll_waveform(audio, np.int64(shift))
        return {**element, "audio": audio, "roll": np.int32(shift), **fields}

@dataclass(frozen=True)
class AttachExtra(grain.transforms.RandomMap):
    """Merges extra(index, rng) into the record (see ExtraFn)."""

    extra: ExtraFn

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        fields = self.extra(int(element["index"]), rng)
        clash = set(fields) & set(element)
        if clash:
            raise ValueError(f"extra fields {sorted(clash)} collide with the record's own fields")
        return {**element, **_as_arrays(fields)}

def _as_arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _as_arrays(v) for k, v in tree.items()}
    return np.asarray(tree)

def _as_source(clips: Sequence[Clip] | ClipSource, root: str | Path | None, sr: int, cache: bool) -> ClipSource:
    if isinstance(clips, ClipSource):
        if clips.sr != sr:
            raise ValueError(f"{clips!r} decodes at {clips.sr} Hz but sr={sr} was requested")
        return clips
    if root is None:
        raise ValueError("root is required when passing clips (or pass a ClipSource)")
    return ClipSource(clips, root, sr=sr, cache=cache)

# grain 0.2.18 reads this absl flag of its own whenever it starts a worker process
# (`ProcessPrefetchIterDataset.__iter__`), and absl refuses to read a flag before FLAGS are
# parsed, which never happens in a script that does not run absl.app (google/grain#1355; fixed
# upstream by google/grain#1362, not in 0.2.18, the newest release). grain.config cannot set it
# (it covers other flags, and also writes them through absl).
_GRAIN_WORKER_PROFILING_FLAG = "grain_enable_multiprocess_worker_profiling"

def _make_grain_worker_flag_readable() -> None:
    """Gives grain's worker-profiling flag its default value as if parsed from the command line.

    Only that flag and only while it is unreadable: FLAGS stay unparsed and every value stays
    as it was, so a later absl.app.run / FLAGS(argv) parses the command line as usual (it may
    still set this flag). Marking all of FLAGS as parsed (the workaround suggested upstream)
    would make code that parses only `if not FLAGS.is_parsed()` skip the command line. It
    cannot be set and restored around a call: grain reads the flag later, on its own
    iterator-making threads, and again whenever it makes a new worker iterator (set_state).
    Delete this once the grain in scripts/constraints.txt contains the upstream fix.
    """
    if flags.FLAGS.is_parsed() or _GRAIN_WORKER_PROFILING_FLAG not in flags.FLAGS:
        return
    flag = flags.FLAGS[_GRAIN_WORKER_PROFILING_FLAG]
    if not flag.present:
        flag.parse(flag.default)

def train_dataset(
    clips: Sequence[Clip] | ClipSource,
    *,
    batch_size: int,
    seed: int,
    root: str | Path | None = None,
    sr: int = 32000,
    roll: augment.RollConfig | None = augment.RollConfig(),
    dir: augment.DIRConfig | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 2,
    extra: ExtraFn | None = None,
    cache: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """The training stream (see module docstring); `iter()` it, checkpoint the iterator.

    Args:
      clips: the split's clips (needs `root`) or a ClipSource, which lets train and eval or
        successive calls share one audio cache.
      batch_size: batch size; the final partial batch (finite num_epochs) is dropped.
      seed: seeds shuffling and every per-element random transform.
      sr: sample rate of the produced audio.
      roll: the waveform roll (DCASE baseline: up to 125 ms either way); None disables it.
      dir: device impulse-response augmentation, applied before the roll; its IR folder is
        read and checked here (`impulse.load_irs`, errors name the file). None disables it.
      num_epochs: None repeats forever; batches may span epoch boundaries.
      worker_count: >0 moves reading and augmentation into that many processes.
      worker_buffer_size: batches buffered per worker process.
      read_threads: threads reading within one process (decode/resample release the GIL).
      extra: optional per-clip fields, see ExtraFn.
      cache: keep decoded audio in memory (only used when clips is not a ClipSource).
      shard: (index, count): this process reads clips index, index + count, ... (multi-host
        data parallelism: every process feeds a disjoint part of each global batch).

    Returns:
      A grain.IterDataset of batch dicts.
    """
    source = _as_source(clips, root, sr, cache)
    if len(source) < batch_size:
        raise ValueError(f"{len(source)} clips cannot fill one batch of {batch_size}")
    ds = grain.MapDataset.source(source)
    if shard[1] > 1:
        ds = ds[shard[0]::shard[1]]
    ds = ds.seed(seed).shuffle().repeat(num_epochs)
    if extra is not None:
        ds = ds.random_map(AttachExtra(extra))
    irs = None if dir is None else dir.load(sr)
    devices = () if dir is None else tuple(c.device for c in source.clips)
    ds = ds.random_map(WaveAugment(roll, sr, dir, irs, devices))
    ds = ds.batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2))
    if worker_count > 0:
        _make_grain_worker_flag_readable()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        )
    return it

@dataclass(frozen=True)
class _ReadOrPad(grain.transforms.Map):
    source: ClipSource

    def map(self, index: int) -> dict[str, np.ndarray]:
        if index < len(self.source):
            return {**self.source[index], "mask": np.bool_(True)}
        # Padding: silent audio, index -1, excluded by mask=False.
        return {
            "audio": np.zeros(self.source.num_samples, np.float32),
            "label": np.int32(0),
            "index": np.int32(-1),
            "mask": np.bool_(False),
        }

def eval_batches(
    clips: Sequence[Clip] | ClipSource,
    batch_size: int,
    *,
    root: str | Path | None = None,
    sr: int = 32000,
    read_threads: int = 2,
    cache: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields every clip once, in order, in fixed-shape batches.

    Each batch is {"audio": (B, T) float32, "label": (B,) int32, "index": (B,) int32,
    "mask": (B,) bool}; the last batch is padded (mask False, index -1, silent audio) so
    jitted eval functions see one shape. Pass a ClipSource to reuse its cache across evals.
    """
    source = _as_source(clips, root, sr, cache)
    n_padded = math.ceil(len(source) / batch_size) * batch_size
    ds = grain.MapDataset.range(n_padded).map(_ReadOrPad(source)).batch(batch_size)
    yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2))
