"""Waveform input pipeline on grain: clips -> shuffled, rolled, batched numpy dicts.

Training (DESIGN rule 9):

  MapDataset.source(ClipSource).seed(seed).shuffle().repeat(num_epochs)
    .random_map(AttachExtra)?.random_map(RollWaveform).batch(B, drop_remainder=True)
    .to_iter_dataset(ReadOptions)  [.mp_prefetch(MultiprocessingOptions)]

yields {"audio": (B, T) float32, "label": (B,) int32, "index": (B,) int32, "roll": (B,) int32}
plus any extra fields. `index` is the clip's position in the split's clip list, so per-clip
data stored elsewhere (teacher logits) can be attached later; `roll` is the circular shift
applied, in samples. Random transforms are seeded per element index, so
`iter(ds).get_state()` / `set_state()` resume the stream exactly; store the state in the
checkpoint.

Evaluation (DESIGN rule 8): `eval_batches` pads the last batch to a static shape and returns
a `mask`, so every clip is counted exactly once.

Opening a split (`load_split_source`, what training and teacher precompute use) checks every
clip before the first batch, so a bad clip is named at once instead of mid-training and
`on_error="skip"` can keep every per-clip failure out of the stream: the metadata and the
files' existence (`tau.load_split`), every header (sample rate, length in file samples,
readable), and under "skip" a full decode as well (NaN/Inf samples, undecodable data; see
`ClipSource.check` for the cost). Skipped clips are logged once per split, as a count plus the
first names, and returned; multi-channel files, averaged to mono, are counted and logged once.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags

from asc_jax.data import tau
from asc_jax.data.tau import TAU_SAMPLE_RATE, BadClipError, Clip, ClipError, Skipped, clip_path, load_audio

log = logging.getLogger(__name__)

# extra(index, rng) -> {name: array or nested dict of arrays}: per-clip fields merged into each
# training record, e.g. `distill.StoreExtras` or `lambda i, rng: {"teacher_logits": L[i]}`.
# Leaves must have the same shape for every index (they are stacked into the batch). rng is
# the element's own generator, for random choices (e.g. one of several stored views) that
# must stay reproducible on resume. With worker_count > 0 it must pickle (no lambdas).
# When the extras carry a stored roll ({"aug": {"roll": {"shift"}}}, a teacher store's view),
# RollWaveform applies that shift instead of drawing one, so the student hears what the
# teacher heard.
ExtraFn = Callable[[int, np.random.Generator], dict[str, Any]]

BASE_KEYS = ("audio", "label", "index", "roll")


class ClipSource:
    """grain RandomAccessDataSource over clips: reads, resamples, optionally caches audio.

    Records are {"audio": (num_samples,) float32, "label": int32, "index": int32}.
    Decoding + resampling every epoch is the dominant data cost on small CPU runs, so with
    cache=True each clip's 32 kHz array is kept after its first read (about 128 kB per 1-s
    clip; 400 MB for the default synthetic training set). Under multiprocessing each worker
    keeps its own cache; the cache is not pickled.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        root: str | Path,
        *,
        sr: int = 32000,
        clip_seconds: float = 1.0,
        expected_sr: int | None = TAU_SAMPLE_RATE,
        cache: bool = True,
    ):
        self.clips = tuple(clips)
        self.root = Path(root)
        self.sr = sr
        self.clip_seconds = clip_seconds
        self.num_samples = round(clip_seconds * sr)
        self.expected_sr = expected_sr
        self.cache = cache
        self._audio: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:  # grain uses it to validate checkpoints
        return f"ClipSource(root={str(self.root)!r}, n={len(self)}, sr={self.sr})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_audio"] = {}
        return state

    def audio(self, index: int) -> np.ndarray:
        cached = self._audio.get(index)
        if cached is not None:
            return cached
        path = clip_path(self.root, self.clips[index])
        audio = load_audio(path, self.sr, expected_sr=self.expected_sr)
        if audio.shape[0] != self.num_samples:
            raise BadClipError(path, f"{audio.shape[0]} samples at {self.sr} Hz, expected {self.num_samples}")
        audio.setflags(write=False)  # cached arrays are shared between epochs
        if self.cache:
            self._audio[index] = audio
        return audio

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        return {
            "audio": self.audio(index),
            "label": np.int32(self.clips[index].label),
            "index": np.int32(index),
        }

    def _check_one(self, index: int, decode: bool) -> int:
        path = clip_path(self.root, self.clips[index])
        info = tau.check_audio_header(path, expected_sr=self.expected_sr, expected_duration=self.clip_seconds)
        if decode:
            self.audio(index)
        return info.channels

    def check(self, *, on_error: str = "raise", decode: bool | None = None,
              threads: int | None = None) -> tuple[ClipSource, list[Skipped], int]:
        """Checks every clip once, up front, so that reading the source later cannot fail.

        Every header is read (missing or unreadable file, sample rate, length in file samples:
        a truncated file reads short); with `decode`, every clip is also decoded and resampled
        as training would (undecodable data, NaN/Inf samples). Cost, measured for 1-s 44.1 kHz
        wavs on a local disk, one thread: a header ~0.2 ms (about 25 s for the 139k clips of
        TAU split 100), a decode + resample ~3 ms (about 7 minutes), divided by `threads`. The
        decode is what one epoch's reading costs anyway: with `cache=True` it fills the cache,
        so the first epoch no longer pays it; an uncached source, or one read by grain worker
        processes (they keep their own caches), decodes everything once more.

        Args:
          on_error: "raise": raise the ClipError of the first bad clip (in clip order), naming
            its file. "skip": leave every bad clip out and return it.
          decode: also decode every clip; default: only under "skip", where the header alone
            cannot promise that no clip fails later.
          threads: parallel readers (decoding and resampling release the GIL).

        Returns:
          (source, skipped, n_multichannel): the source of the good clips (this one if none was
          left out, else a new one sharing the decoded audio), the skipped clips with their
          reasons, and how many good clips have several channels (they are averaged to mono).
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        decode = on_error == "skip" if decode is None else decode
        threads = threads or min(8, os.cpu_count() or 1)
        channels: dict[int, int] = {}
        skipped: list[Skipped] = []
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(self._check_one, i, decode) for i in range(len(self))]
            try:
                for i, future in enumerate(futures):
                    try:
                        channels[i] = future.result()
                    except ClipError as err:
                        if on_error == "raise":
                            raise
                        skipped.append(Skipped(self.clips[i].filename, err.reason))
            finally:
                for future in futures:  # after a raise, do not decode the rest
                    future.cancel()
        n_multichannel = sum(c > 1 for c in channels.values())
        if not skipped:
            return self, skipped, n_multichannel
        keep = sorted(channels)
        good = ClipSource([self.clips[i] for i in keep], self.root, sr=self.sr, clip_seconds=self.clip_seconds,
                          expected_sr=self.expected_sr, cache=self.cache)
        good._audio = {new: self._audio[old] for new, old in enumerate(keep) if old in self._audio}
        return good, skipped, n_multichannel


@dataclass(frozen=True)
class SplitSource:
    """A split opened by `load_split_source`.

    Attributes:
      split: the split's name.
      source: the clips that passed every check (meta.csv order).
      skipped: the clips left out under on_error="skip", with their reasons (meta.csv order
        within each stage: metadata first, then audio).
      n_multichannel: clips with more than one channel (averaged to mono).
    """

    split: str
    source: ClipSource
    skipped: tuple[Skipped, ...]
    n_multichannel: int

    @property
    def clips(self) -> list[Clip]:
        return list(self.source.clips)


def dataset_root(root: str | Path, *, generate: bool, synthetic_params: Mapping[str, int] | None = None) -> Path:
    """The dataset root a config's `data` section names: with `generate`, the embedded synthetic
    set is made sure to be there (`synthetic.ensure_dataset`); else it must hold meta.csv."""
    root = Path(root)
    if generate:
        from asc_jax.data import synthetic
        synthetic.ensure_dataset(root, **dict(synthetic_params or {}))
    elif not (root / "meta.csv").is_file():
        raise FileNotFoundError(f"no meta.csv under data.root={root}; point it at a TAU dataset "
                                "or set data.generate=True for the embedded synthetic set")
    return root


def load_split_source(
    root: str | Path,
    split: str | int,
    *,
    sr: int = 32000,
    clip_seconds: float = 1.0,
    expected_sr: int | None = TAU_SAMPLE_RATE,
    cache: bool = True,
    on_error: str = "raise",
    threads: int | None = None,
) -> SplitSource:
    """Reads a split's clips and checks every one up front (see the module docstring).

    Args:
      root: dataset root in TAU layout.
      split: '5' ... '100' or 'test'.
      sr, clip_seconds, expected_sr, cache: as in `ClipSource`.
      on_error: "raise": the first bad clip raises its ClipError, naming the file (metadata,
        existence and headers are checked here; a clip whose data cannot be decoded raises
        when it is read). "skip": every per-clip failure (metadata row, missing file,
        unreadable/corrupt/truncated audio, wrong sample rate or length, NaN/Inf samples) is
        left out, at the price of decoding every clip once (`ClipSource.check`).
      threads: parallel readers for the check.

    Returns:
      The checked split; one warning per split is logged for skipped clips (count and first
      names) and one for multi-channel clips (count).
    """
    split = str(split)
    if on_error == "skip":
        clips, bad_meta = tau.load_split(root, split, on_error="skip", report=False)
    else:
        clips, bad_meta = tau.load_split(root, split, on_error=on_error), []
    source = ClipSource(clips, root, sr=sr, clip_seconds=clip_seconds, expected_sr=expected_sr, cache=cache)
    source, bad_audio, n_multichannel = source.check(on_error=on_error, threads=threads)
    skipped = (*bad_meta, *bad_audio)
    if skipped:
        log.warning("split %s: %s", split, tau.describe_skipped(skipped, len(clips) + len(bad_meta)))
    if n_multichannel:
        log.warning("split %s: %d of %d clips have more than one channel; they are averaged to mono",
                    split, n_multichannel, len(source))
    return SplitSource(split, source, skipped, n_multichannel)


@dataclass(frozen=True)
class RollWaveform(grain.transforms.RandomMap):
    """Circular time shift by a uniform integer in [-max_shift, max_shift] samples."""

    max_shift: int

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        stored = element.get("aug", {}).get("roll")
        # A teacher-logit store fixes the shift its teacher saw (attached by AttachExtra first).
        shift = int(stored["shift"]) if stored is not None else int(rng.integers(-self.max_shift, self.max_shift + 1))
        return {**element, "audio": np.roll(element["audio"], shift), "roll": np.int32(shift)}


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
    max_roll_ms: float = 125.0,
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
      max_roll_ms: maximum circular shift either way (DCASE baseline: 125 ms); 0 disables.
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
    max_shift = round(max_roll_ms * sr / 1000.0)
    ds = grain.MapDataset.source(source)
    if shard[1] > 1:
        ds = ds[shard[0]::shard[1]]
    ds = ds.seed(seed).shuffle().repeat(num_epochs)
    if extra is not None:
        ds = ds.random_map(AttachExtra(extra))
    ds = ds.random_map(RollWaveform(max_shift))
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
