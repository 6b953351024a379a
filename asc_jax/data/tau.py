"""TAU Urban Acoustic Scenes 2022 Mobile (DCASE2024 Task 1) metadata and audio loading.

Layout (as shipped on Zenodo plus the DCASE2024 split files):

  root/
    meta.csv                 tab-separated: filename, scene_label, identifier, source_label
    audio/<scene>-<city>-<location>-<segment>-<clip>-<device>.wav   (1 s, 44.1 kHz)
    split5.csv ... split100.csv, test.csv     (either here or in root/split_setup/,
                                               where the DCASE2024 baseline stores them)

Split files are tab-separated with a `filename` column (the released ones also carry
`scene_label`, which is checked against meta.csv when present). As in the DCASE2024 baseline
(`meta[meta.filename.isin(split_files)]`), a split's clips are returned in meta.csv order, so
the clip index into a split is stable no matter how the split file is sorted; teacher-logit
stores rely on that index.
"""
from __future__ import annotations

import collections
import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, overload

import numpy as np
import soundfile as sf

from asc_jax.audio.resample import resample

log = logging.getLogger(__name__)

# Canonical DCASE order (alphabetical, as the baseline's LabelEncoder produces it).
CLASSES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

REAL_DEVICES: tuple[str, ...] = ("a", "b", "c")
SEEN_SIMULATED_DEVICES: tuple[str, ...] = ("s1", "s2", "s3")
UNSEEN_DEVICES: tuple[str, ...] = ("s4", "s5", "s6")
# Devices present in the development-train splits; the test split adds UNSEEN_DEVICES.
SEEN_DEVICES: tuple[str, ...] = REAL_DEVICES + SEEN_SIMULATED_DEVICES
DEVICES: tuple[str, ...] = SEEN_DEVICES + UNSEEN_DEVICES

SPLITS: tuple[str, ...] = ("5", "10", "25", "50", "100", "test")
SPLIT_SUBDIR = "split_setup"
TAU_SAMPLE_RATE = 44100

_META_COLUMNS = ("filename", "scene_label", "identifier")


class ClipError(Exception):
    """A problem with one clip; `filename` names it."""

    def __init__(self, filename: str | Path, reason: str):
        super().__init__(f"{filename}: {reason}")
        self.filename = str(filename)
        self.reason = reason

    def __str__(self) -> str:  # OSError (MissingClipError's other base) would print errno
        return f"{self.filename}: {self.reason}"


class MissingClipError(ClipError, FileNotFoundError):
    """The audio file (or a clip referenced by a split) does not exist."""


class BadClipError(ClipError, ValueError):
    """Unknown label, wrong sample rate or length, unreadable, corrupt or empty audio."""


@dataclass(frozen=True)
class Clip:
    """One 1-second clip. `filename` is relative to the dataset root, exactly as in meta.csv."""

    filename: str
    label: int
    device: str
    city: str
    identifier: str


@dataclass(frozen=True)
class Skipped:
    """A clip left out under on_error='skip', with the reason."""

    filename: str
    reason: str


def device_from_filename(filename: str) -> str:
    """`audio/airport-lisbon-1000-40000-0-a.wav` -> `a` (last `-` field of the stem)."""
    return Path(filename).stem.rsplit("-", 1)[-1]


def city_from_identifier(identifier: str) -> str:
    """`lisbon-1000` -> `lisbon`."""
    return identifier.split("-", 1)[0]


def clip_path(root: str | Path, clip: Clip) -> Path:
    return Path(root) / clip.filename


def _read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; found {reader.fieldnames} "
                "(TAU files are tab-separated)"
            )
        return list(reader)


def find_split_file(root: str | Path, split: str | int) -> Path:
    """Locates split{x}.csv / test.csv in root or root/split_setup.

    Raises:
      ValueError: unknown split name, or two differing copies exist (ambiguous).
      FileNotFoundError: neither location has the file.
    """
    split = str(split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    name = "test.csv" if split == "test" else f"split{split}.csv"
    root = Path(root)
    found = [p for p in (root / name, root / SPLIT_SUBDIR / name) if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"split file {name} not found in {root} or {root / SPLIT_SUBDIR}"
        )
    if len(found) == 2 and found[0].read_bytes() != found[1].read_bytes():
        raise ValueError(f"ambiguous split: {found[0]} and {found[1]} both exist and differ")
    return found[0]


def _clip_from_row(row: dict[str, str]) -> Clip:
    filename = row["filename"]
    empty = [c for c in _META_COLUMNS if not row.get(c)]
    if empty:  # a short or blank-field line of meta.csv
        raise BadClipError(filename, f"meta.csv row has no {', '.join(empty)}")
    scene = row["scene_label"]
    if scene not in CLASS_TO_INDEX:
        raise BadClipError(filename, f"unknown scene label {scene!r}; known: {', '.join(CLASSES)}")
    device = device_from_filename(filename)
    source_label = row.get("source_label")
    if source_label and source_label != device:
        raise BadClipError(
            filename, f"device {device!r} in the filename disagrees with source_label {source_label!r}"
        )
    identifier = row["identifier"]
    return Clip(filename, CLASS_TO_INDEX[scene], device, city_from_identifier(identifier), identifier)


@overload
def load_split(
    root: str | Path,
    split: str | int,
    *,
    verify: Literal["none", "exists", "audio"] = ...,
    expected_sr: int | None = ...,
    on_error: Literal["raise"] = ...,
    report: bool = ...,
) -> list[Clip]: ...


@overload
def load_split(
    root: str | Path,
    split: str | int,
    *,
    verify: Literal["none", "exists", "audio"] = ...,
    expected_sr: int | None = ...,
    on_error: Literal["skip"],
    report: bool = ...,
) -> tuple[list[Clip], list[Skipped]]: ...


def load_split(root, split, *, verify="exists", expected_sr=TAU_SAMPLE_RATE, on_error="raise",
               report=True):
    """Reads the clips of one split.

    Args:
      root: dataset root (contains meta.csv and audio/).
      split: one of '5', '10', '25', '50', '100', 'test' (ints accepted).
      verify: 'none' trusts the metadata, 'exists' checks every audio file exists, 'audio'
        additionally opens every file and checks its header (sample rate, non-empty) —
        slow on the full TAU set, meant for a one-off scan.
      expected_sr: sample rate the files must have when verify='audio' (None: any).
      on_error: 'raise' fails on the first bad clip; 'skip' leaves every bad clip out (a
        problem of its metadata row, a file missing, and with verify='audio' a bad header) and
        returns them. This checks no more than `verify` asks: to skip clips whose audio cannot
        be decoded, use `asc_jax.data.sources.load_split_source`, which checks every clip's audio up front.
      report: under on_error='skip', log one warning with the count and the first names of
        the skipped clips (False: the caller reports them, e.g. merged with its own).

    Returns:
      The split's clips in meta.csv order; with on_error='skip', `(clips, skipped)`.

    Raises:
      ClipError (MissingClipError / BadClipError) naming the file, under on_error='raise'.
      ValueError naming the files a split lists that meta.csv lacks, under on_error='raise'
      (skipped under 'skip').
      FileNotFoundError / ValueError for a missing or malformed meta.csv / split file, or a
      split file listing a clip twice (never skipped: the file itself is broken).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if verify not in ("none", "exists", "audio"):
        raise ValueError(f"verify must be 'none', 'exists' or 'audio', got {verify!r}")
    root = Path(root)
    meta_path = root / "meta.csv"
    meta_rows = _read_tsv(meta_path, _META_COLUMNS)
    split_path = find_split_file(root, split)
    split_rows = _read_tsv(split_path, ("filename",))

    wanted: dict[str, str | None] = {}
    for row in split_rows:
        name = row["filename"]
        if name in wanted:
            raise ValueError(f"{split_path}: {name} is listed twice")
        wanted[name] = row.get("scene_label") or None

    clips: list[Clip] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    n_rows = collections.Counter(row["filename"] for row in meta_rows if row["filename"] in wanted)
    for row in meta_rows:
        name = row["filename"]
        if name not in wanted or name in seen:
            continue
        seen.add(name)
        try:
            if n_rows[name] > 1:  # ambiguous metadata: neither row is trusted
                raise BadClipError(name, f"listed {n_rows[name]} times in meta.csv")
            split_label = wanted[name]
            if split_label is not None and split_label != row["scene_label"]:
                raise BadClipError(
                    name,
                    f"scene_label {split_label!r} in {split_path.name} disagrees with "
                    f"{row['scene_label']!r} in meta.csv",
                )
            clip = _clip_from_row(row)
            if verify == "exists" and not clip_path(root, clip).is_file():
                raise MissingClipError(clip_path(root, clip), "audio file not found")
            if verify == "audio":
                check_audio_header(clip_path(root, clip), expected_sr=expected_sr)
        except ClipError as err:
            if on_error == "raise":
                raise
            skipped.append(Skipped(name, err.reason))
            continue
        clips.append(clip)

    unknown = [name for name in wanted if name not in seen]
    if unknown and on_error == "raise":
        raise ValueError(
            f"{split_path}: {len(unknown)} file(s) not in {meta_path}, e.g. {unknown[:3]}"
        )
    if on_error == "skip":
        skipped += [Skipped(name, f"listed in {split_path.name} but not in meta.csv") for name in unknown]
        if skipped and report:
            log.warning("split %s: %s", split, describe_skipped(skipped, len(wanted)))
        return clips, skipped
    return clips


def describe_skipped(skipped: Sequence[Skipped], total: int, n_shown: int = 5) -> str:
    """'skipped 3 of 40 clips: a.wav (reason); b.wav (reason); ...' (the first n_shown)."""
    shown = "; ".join(f"{s.filename} ({s.reason})" for s in skipped[:n_shown])
    more = f"; and {len(skipped) - n_shown} more" if len(skipped) > n_shown else ""
    return f"skipped {len(skipped)} of {total} clips: {shown}{more}"


def check_audio_header(
    path: str | Path,
    *,
    expected_sr: int | None = TAU_SAMPLE_RATE,
    expected_duration: float | None = None,
):
    """Opens the header of an audio file and validates it (no samples are decoded).

    A file truncated in the middle of its data is caught here: libsndfile counts the frames
    actually present, so it reads as too short. NaN/Inf samples need a decode (`load_audio`).

    Args:
      path: audio file.
      expected_sr: the file's required sample rate (None: accept any).
      expected_duration: required duration in seconds, checked exactly in file samples.

    Returns:
      The soundfile info object (samplerate, frames, channels).

    Raises:
      MissingClipError: the file does not exist.
      BadClipError: unreadable/corrupt, empty, with a sample rate other than expected_sr, or
        with a length other than expected_duration.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingClipError(path, "audio file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadClipError(path, f"unreadable or corrupt audio ({err})") from err
    if info.frames <= 0:
        raise BadClipError(path, "empty audio (0 samples)")
    if expected_sr is not None and info.samplerate != expected_sr:
        raise BadClipError(path, f"sample rate {info.samplerate} Hz, expected {expected_sr} Hz")
    if expected_duration is not None:
        want = round(expected_duration * info.samplerate)
        if info.frames != want:
            raise BadClipError(
                path, f"{info.frames} samples, expected {want} ({expected_duration} s at {info.samplerate} Hz)"
            )
    return info


def load_audio(
    path: str | Path,
    target_sr: int = 32000,
    *,
    expected_sr: int | None = TAU_SAMPLE_RATE,
    expected_duration: float | None = None,
    resampler: str = "soxr",
) -> np.ndarray:
    """Reads an audio file as a mono float32 waveform at target_sr.

    Args:
      path: audio file.
      target_sr: output sample rate; resampled with `resampler` when it differs.
      expected_sr: the file's required sample rate (None: accept any).
      expected_duration: required duration in seconds, checked exactly in file samples
        (a truncated file still decodes, so this is the only way to notice it).
      resampler: "soxr" (high quality) or "torchaudio" (its default sinc resampler, for models
        trained on it; `asc_jax.audio.resample`).

    Returns:
      float32 array of shape (n,), channels averaged.

    Raises:
      MissingClipError / BadClipError naming the file (see check_audio_header), also for a
      wrong length or non-finite samples.
    """
    path = Path(path)
    check_audio_header(path, expected_sr=expected_sr, expected_duration=expected_duration)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadClipError(path, f"unreadable or corrupt audio ({err})") from err
    if audio.shape[0] == 0:
        raise BadClipError(path, "empty audio (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise BadClipError(path, "audio contains NaN or Inf")
    mono = audio.mean(axis=1)
    mono = resample(mono, sr, target_sr, resampler)
    return np.ascontiguousarray(mono, dtype=np.float32)
