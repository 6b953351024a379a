"""Frontends: the waveform -> features function a model is trained on, named in its model.json.

Two are registered: "logmel", the students' log-mel of `asc_jax.audio.features` (settings: a
`MelConfig`), and "passt", PaSST's own log-mel (128 Kaldi mel bins, normalised; settings: a
`PaSSTFrontendConfig`). A training config chooses one (`Config.frontend`, its settings in the
section `CONFIG_SECTIONS` names; `of_config`); training writes it to model.json as
{"frontend": {"name", "options"}}, and `frontend_of(spec)` rebuilds it from there, so that every
saved model predicts with its own frontend and no caller passes one by hand
(`asc_jax.inference.load`).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig, passt_logmel
from asc_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Frontend:
    """A model's feature extractor.

    Attributes:
      name: FRONTENDS registry name.
      options: JSON-able settings (recorded in teacher-store headers).
      sample_rate: waveform rate it expects (Hz).
      n_mels: frequency bins of its features (the resolution stored masks are converted to).
      features: ``wave (B, n_samples) -> (B, n_mels, n_frames)``, traceable.
      from_log_mel: maps a value in natural log-mel units (``log(mel + floor)``, in which the
        stored ``freq_mask.mask_value`` is expressed) to this frontend's feature units.
    """

    name: str
    options: Mapping[str, Any]
    sample_rate: int
    n_mels: int
    features: Callable[[jax.Array], jax.Array]
    from_log_mel: Callable[[float], float]

    def describe(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}


FRONTENDS: Registry[Callable[[Mapping[str, Any]], Frontend]] = Registry("frontend")


def logmel(cfg: MelConfig) -> Frontend:
    """The log-mel frontend of the models trained here (`features.log_mel` with `cfg`)."""
    return Frontend("logmel", dataclasses.asdict(cfg), cfg.sample_rate, cfg.n_mels,
                    functools.partial(log_mel, cfg=cfg), lambda v: v)


@FRONTENDS.register("logmel")
def _logmel_frontend(options: Mapping[str, Any]) -> Frontend:
    return logmel(MelConfig(**options))


@FRONTENDS.register("passt")
def _passt_frontend(options: Mapping[str, Any]) -> Frontend:
    cfg = PaSSTFrontendConfig(**options)
    # hear21passt's AugmentMelSTFT masks log(mel + 1e-5) *before* its (x + 4.5) / 5 normalisation
    # (passt_frontend.passt_logmel), so a band masked to v in log-mel units reads (v + 4.5) / 5.
    return Frontend("passt", dataclasses.asdict(cfg), cfg.sample_rate, cfg.n_mels,
                    functools.partial(passt_logmel, config=cfg), lambda v: (v + 4.5) / 5.0)


# Converted checkpoints carry no frontend description; these architectures imply one.
DEFAULT_FRONTENDS: Mapping[str, str] = {"passt": "passt"}


def frontend_of(spec: Mapping[str, Any], directory: str | Path) -> Frontend:
    """The frontend a saved model was trained on, from its model.json.

    Precedence: an explicit ``"frontend": {"name", "options"}`` entry; else the ``"mel"`` entry
    that ``train.py`` writes (the "logmel" frontend); else ``DEFAULT_FRONTENDS`` by architecture.

    Args:
      spec: the model.json (`checkpoint.read_spec`).
      directory: the saved model's directory, named in errors.
    Raises:
      ValueError: naming the directory when none applies or the options do not fit.
    """
    frontend = recorded_frontend(spec, directory)
    if frontend is None:
        raise ValueError(
            f"{directory}/model.json names no frontend (no 'frontend' or 'mel' entry) and "
            f"architecture {spec['model']['name']!r} has no default; known defaults: "
            f"{dict(DEFAULT_FRONTENDS)}")
    return frontend


def recorded_frontend(spec: Mapping[str, Any], directory: str | Path) -> Frontend | None:
    """The frontend model.json names (precedence of `frontend_of`), or None if it names none
    (e.g. a pruning phase's sliced init written before inits carried it).

    Raises:
      ValueError: naming the directory, when the recorded options do not fit the frontend.
    """
    if "frontend" in spec:
        name, options = spec["frontend"]["name"], spec["frontend"].get("options", {})
    elif "mel" in spec:
        name, options = "logmel", spec["mel"]
    elif spec["model"]["name"] in DEFAULT_FRONTENDS:
        name, options = DEFAULT_FRONTENDS[spec["model"]["name"]], {}
    else:
        return None
    try:
        return FRONTENDS.get(name)(options)
    except TypeError as e:
        raise ValueError(f"{directory}/model.json: bad options for frontend {name!r}: {e}") from None


# The Config section (`asc_jax.config.Config` field) holding each frontend's settings.
CONFIG_SECTIONS: Mapping[str, str] = {"logmel": "mel", "passt": "passt_frontend"}


def of_config(config: Any) -> Frontend:
    """The frontend a training config chooses: ``config.frontend`` with its section's settings.

    Raises:
      ValueError: naming the known frontends, for an unknown ``config.frontend``.
    """
    if config.frontend not in CONFIG_SECTIONS:
        raise ValueError(f"unknown frontend {config.frontend!r}; known: {sorted(CONFIG_SECTIONS)}")
    section = getattr(config, CONFIG_SECTIONS[config.frontend])
    return FRONTENDS.get(config.frontend)(dataclasses.asdict(section))


def feature_augment(aug_cfg: augment.AugmentConfig, frontend: Frontend) -> augment.AugmentConfig:
    """``aug_cfg`` with its masks' values moved into ``frontend``'s feature units.

    ``mask_value`` (of every mask: frequency, time) is in natural log-mel units (0 = log-mel 0,
    torchaudio's default); a frontend that normalises its log-mel (PaSST: (x + 4.5) / 5) must
    write the same value in its own units, so a band masked for the student and replayed for a
    teacher (or a PaSST trained here) hides the same thing.
    """
    return dataclasses.replace(aug_cfg, **{
        name: dataclasses.replace(op, mask_value=float(frontend.from_log_mel(op.mask_value)))
        for _, name, op in augment.enabled(aug_cfg) if hasattr(op, "mask_value")})
