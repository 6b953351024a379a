"""Device-keyed model sets (DCASE2025 Task 1): a general model plus one model per known device.

DCASE2025 gives the recording device at inference and allows a separate model per device; 128 kB
and 30 MMACs apply to each. A set is one directory:

  device_set.json   {"format", "version", "base": "base", "devices": {"a": "devices/a", ...},
                     "class_names", "meta": {...provenance...}}
  base/             the general model (stage 1): a normal saved model (float deploy or int8)
  devices/<id>/     each device's model (stage 2 fine-tune of the base), a normal saved model

Every member is an ordinary saved model, so quantization, export and the complexity report work
per member unchanged; the set only routes: a clip of a device listed in "devices" goes to that
model, any other device id (an unseen device, "unknown", a missing id) to the base model.
`predict_routed` runs each group through its own model with `asc_jax.inference.predict` (the one
inference path) and returns the logits in input order with the routing counts; its clips are
waveforms in memory or a `ClipSource` (read in batches: the TAU test split is ~4 GB of float32
audio). `update_meta` adds entries (an evaluation) to a written set's manifest, atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from asc_jax import inference
from asc_jax.checkpoint import read_spec, resolve_model_dir
from asc_jax.data import sources

FORMAT = "asc_jax.device_set"
VERSION = 1
MANIFEST = "device_set.json"
BASE = "base"  # the routing key of the general model
UNKNOWN = "unknown"  # the DCASE2025 device id of clips without a known device


@dataclasses.dataclass(frozen=True)
class DeviceModelSet:
    """A device set on disk (`read_device_set`).

    Attributes:
      directory: the set's directory.
      base: the general model's saved-model directory.
      devices: {device id: saved-model directory} of the device-specific models.
      class_names: the class order every member's logits follow.
      meta: provenance (how each member was trained).
    """

    directory: Path
    base: Path
    devices: Mapping[str, Path]
    class_names: tuple[str, ...]
    meta: Mapping[str, Any]

    def route(self, device_id: str | None) -> str:
        """The member a clip of ``device_id`` goes to: the device itself if the set has a model
        for it, else `BASE` (unseen, "unknown", None or empty ids)."""
        return device_id if device_id in self.devices else BASE

    def members(self) -> dict[str, Path]:
        """{member key: saved-model directory}, the base first."""
        return {BASE: self.base, **self.devices}


def is_device_set(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_device_set(path: str | Path) -> DeviceModelSet:
    """Reads a set written by `write_device_set`.

    Raises:
      FileNotFoundError: no manifest, or a member directory that is not there (named).
      ValueError: a manifest of another format/version or without its fields, or members whose
        class names disagree with the manifest's (named).
    """
    directory = Path(path).absolute()
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing: {directory} is not a device model set")
    try:
        spec = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{manifest} is not valid JSON ({err})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ValueError(f"{manifest}: not a {FORMAT} manifest of version {VERSION}")
    missing = [k for k in ("base", "devices", "class_names") if k not in spec]
    if missing:
        raise ValueError(f"{manifest}: missing fields {missing}")
    members = {BASE: spec["base"], **spec["devices"]}
    resolved = {}
    for key, rel in members.items():
        member = directory / rel
        if not (member / "model.json").is_file():
            raise FileNotFoundError(f"{manifest}: member {key!r} ({member}) holds no saved model")
        names = read_spec(member).get("class_names")
        if names is not None and list(names) != list(spec["class_names"]):
            raise ValueError(f"{manifest}: member {key!r} predicts classes {names}, the set "
                             f"{spec['class_names']}")
        resolved[key] = member
    return DeviceModelSet(directory, resolved.pop(BASE), resolved, tuple(spec["class_names"]),
                          spec.get("meta", {}))


def write_device_set(out: str | Path, base: str | Path, devices: Mapping[str, str | Path], *,
                     class_names: Sequence[str], meta: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> DeviceModelSet:
    """Copies saved models (or train.py workdirs: their deploy/, else model/) into a new set.

    Args:
      out: the set's directory (must not exist unless ``overwrite``).
      base: the general model.
      devices: {device id: model} of the device-specific models; ids BASE / UNKNOWN are refused
        (unknown devices always go to the base).
      class_names: the class order of every member.
      meta: provenance recorded in the manifest.
    Returns:
      The written set, read back (`read_device_set`).
    """
    out = Path(out).absolute()
    reserved = {BASE, UNKNOWN} & set(devices)
    if reserved:
        raise ValueError(f"device ids {sorted(reserved)} are reserved: unknown devices use the base model")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    members = {BASE: "base", **{d: f"devices/{d}" for d in devices}}
    for key, source in {BASE: base, **devices}.items():
        shutil.copytree(resolve_model_dir(source), tmp / members[key])
    spec = {"format": FORMAT, "version": VERSION, "base": members[BASE],
            "devices": {d: members[d] for d in devices}, "class_names": list(class_names),
            "meta": dict(meta or {})}
    (tmp / MANIFEST).write_text(json.dumps(spec, indent=2) + "\n")
    tmp.rename(out)  # atomic: a crash leaves no half-written set under `out`
    return read_device_set(out)


def update_meta(path: str | Path, entries: Mapping[str, Any]) -> DeviceModelSet:
    """Sets top-level `entries` of a set's manifest "meta" (e.g. "eval"), leaving the members alone.

    The manifest is rewritten through a temporary file and `os.replace`, so a crash leaves the old
    or the new one, never half of one.

    Returns:
      The set, read back (`read_device_set`).
    """
    device_set = read_device_set(path)  # refuses anything that is not a readable set
    manifest = device_set.directory / MANIFEST
    spec = json.loads(manifest.read_text())
    spec["meta"] = {**spec.get("meta", {}), **entries}
    text = json.dumps(spec, indent=2) + "\n"  # fails before writing anything if not JSON-able
    tmp = manifest.with_name(MANIFEST + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, manifest)
    return read_device_set(device_set.directory)


@dataclasses.dataclass(frozen=True)
class RoutedPredictions:
    logits: np.ndarray  # (N, C) in input order
    members: tuple[str, ...]  # the member each clip went to
    counts: Mapping[str, int]  # clips per member
    n_unknown: int  # clips whose device id had no model of its own (routed to the base)


def load_members(device_set: DeviceModelSet) -> dict[str, inference.SavedModel]:
    """Every member loaded for inference; they must agree on the audio they take.

    Raises:
      ValueError: members whose frontends want another sample rate or resampler (one waveform
        per clip feeds whichever member the clip is routed to).
    """
    loaded = {key: inference.load(path) for key, path in device_set.members().items()}
    rates = {k: (m.frontend.sample_rate, m.frontend.resampler) for k, m in loaded.items()}
    if len(set(rates.values())) != 1:
        raise ValueError(f"{device_set.directory}: members take audio at different rates or "
                         f"resamplers: {rates}")
    return loaded


def predict_routed(device_set: DeviceModelSet, waves: np.ndarray | sources.ClipSource,
                   device_ids: Sequence[str | None], *, batch_size: int = 64,
                   loaded: Mapping[str, inference.SavedModel] | None = None) -> RoutedPredictions:
    """Logits of each clip from the member its device routes to.

    Args:
      waves: (N, n_samples) waveforms at the members' rate, or a ClipSource of N clips read at it.
      device_ids: one id per clip (None / "" / "unknown" / unseen ids go to the base).
      loaded: members already loaded (`load_members`), to reuse across calls.
    Raises:
      ValueError: not one device id per clip, or a ClipSource read at another rate or resampler
        than the members' frontends take.
    """
    loaded = load_members(device_set) if loaded is None else loaded
    if isinstance(waves, sources.ClipSource):
        frontend = next(iter(loaded.values())).frontend
        if (waves.sr, waves.resampler) != (frontend.sample_rate, frontend.resampler):
            raise ValueError(f"{waves!r} reads audio at {waves.sr} Hz ({waves.resampler}); the members of "
                             f"{device_set.directory} take {frontend.sample_rate} Hz ({frontend.resampler})")
        select = waves.subset
    else:
        waves = np.asarray(waves, np.float32)
        select = waves.__getitem__
    if len(device_ids) != len(waves):
        raise ValueError(f"{len(device_ids)} device ids for {len(waves)} clips")
    members = tuple(device_set.route(d or None) for d in device_ids)
    logits = np.zeros((len(waves), len(device_set.class_names)), np.float32)
    counts = {}
    for key in loaded:
        rows = np.flatnonzero(np.asarray(members) == key) if members else np.zeros(0, int)
        counts[key] = int(rows.size)
        if rows.size:
            logits[rows] = inference.predict(loaded[key].fn, select(rows), batch_size)
    n_unknown = sum(1 for d in device_ids if device_set.route(d or None) == BASE)
    return RoutedPredictions(logits, members, counts, n_unknown)
