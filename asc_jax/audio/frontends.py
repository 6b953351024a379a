"""Frontends: the waveform -> features function a model is trained on, named in its model.json.

Each registered frontend is a preset of one of two settings classes:

  name         settings               preset
  "logmel"     `MelConfig`            the students' log-mel trained here (hop 512, Slaney mels)
  "dcase2024"  `MelConfig`            the DCASE2024 baseline's torchaudio MelSpectrogram (hop
                                      500, HTK mels, no filter normalisation, reflect padding,
                                      log(x + 1e-5)), audio resampled as torchaudio does
  "passt"      `PaSSTFrontendConfig`  PaSST's AugmentMelSTFT (128 Kaldi mels, hop 320, normalised)
  "cpjku"      `PaSSTFrontendConfig`  the CPJKU DCASE2023 students' AugmentMelSTFT (256 Kaldi
                                      mels, window 3072, n_fft 4096, hop 500: 64 frames per 1 s)

The settings say how audio reaches the frontend's rate too (``resampler``,
`asc_jax.audio.resample`), so a converted PyTorch model is fed what its original was.

A training config chooses one (`Config.frontend`); its settings section (`CONFIG_SECTIONS`)
holds changes relative to the settings class's defaults, applied on top of the preset
(`of_config`; for "logmel" and "passt" the preset is the class default, so the section is the
settings). Training writes the resolved frontend to model.json as {"frontend": {"name",
"options"}} (every field), and `frontend_of(spec)` rebuilds it from there, so that every saved
model predicts with its own frontend and no caller passes one by hand (`asc_jax.inference.load`).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from asc_jax.audio import augment
from asc_jax.audio.features import MelConfig, log_mel
from asc_jax.audio.passt_frontend import CPJKU_STUDENT, PaSSTFrontendConfig, passt_logmel, passt_logmel_train
from asc_jax.audio.resample import RESAMPLERS
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
      resampler: how audio of another rate is brought to ``sample_rate`` (`RESAMPLERS`).
      train_features: ``(wave, key) -> features`` in training, when the frontend draws its own
        augmentation (the Kaldi-mel fmin/fmax jitter); None: training uses ``features``.
    """

    name: str
    options: Mapping[str, Any]
    sample_rate: int
    n_mels: int
    features: Callable[[jax.Array], jax.Array]
    from_log_mel: Callable[[float], float]
    resampler: str = "soxr"
    train_features: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def __post_init__(self):
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"frontend {self.name!r}: unknown resampler {self.resampler!r}; "
                             f"known: {RESAMPLERS}")

    def training_features(self, wave: jax.Array, key: jax.Array) -> jax.Array:
        """The features a train step computes (`train_features` if any, with ``key``)."""
        return self.features(wave) if self.train_features is None else self.train_features(wave, key)

    def describe(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}


FRONTENDS: Registry[Callable[[Mapping[str, Any]], Frontend]] = Registry("frontend")


def logmel(cfg: MelConfig, name: str = "logmel") -> Frontend:
    """A `features.log_mel` frontend with settings `cfg` (the models trained here: "logmel")."""
    return Frontend(name, dataclasses.asdict(cfg), cfg.sample_rate, cfg.n_mels,
                    functools.partial(log_mel, cfg=cfg), lambda v: v, resampler=cfg.resampler)


def kaldi_logmel(cfg: PaSSTFrontendConfig, name: str = "passt") -> Frontend:
    """An AugmentMelSTFT frontend (`passt_frontend.passt_logmel`) with settings `cfg`."""
    # AugmentMelSTFT masks log(mel + 1e-5) *before* its (x + 4.5) / 5 normalisation
    # (passt_frontend.passt_logmel), so a band masked to v in log-mel units reads (v + 4.5) / 5.
    return Frontend(name, dataclasses.asdict(cfg), cfg.sample_rate, cfg.n_mels,
                    functools.partial(passt_logmel, config=cfg), lambda v: (v + 4.5) / 5.0,
                    resampler=cfg.resampler,
                    train_features=(functools.partial(passt_logmel_train, config=cfg)
                                    if cfg.mel_jitter else None))


# torchaudio.transforms.MelSpectrogram(sample_rate=32000, n_fft=4096, win_length=3072,
# hop_length=500, n_mels=256) then log(x + 1e-5), behind torchaudio.transforms.Resample(44100,
# 32000): CPJKU/dcase2024_task1_baseline run_training.py. 65 frames per 1-s clip.
DCASE2024_BASELINE = MelConfig(hop_length=500, htk=True, norm=None, pad_mode="reflect",
                               resampler="torchaudio")

# name -> (settings class, preset, builder). `of_config` reads the settings class's defaults.
PRESETS: Mapping[str, tuple[Any, Callable[[Any, str], Frontend]]] = {
    "logmel": (MelConfig(), logmel),
    "dcase2024": (DCASE2024_BASELINE, logmel),
    "passt": (PaSSTFrontendConfig(), kaldi_logmel),
    "cpjku": (CPJKU_STUDENT, kaldi_logmel),
}


def _register(name: str) -> None:
    preset, build = PRESETS[name]
    FRONTENDS.register(name)(lambda options: build(dataclasses.replace(preset, **options), name))


for _name in PRESETS:
    _register(_name)


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
CONFIG_SECTIONS: Mapping[str, str] = {"logmel": "mel", "dcase2024": "mel", "passt": "passt_frontend",
                                      "cpjku": "passt_frontend"}


def of_config(config: Any) -> Frontend:
    """The frontend a training config chooses: ``config.frontend``'s preset, with the fields of
    its section that differ from the settings class's defaults applied on top (so
    ``frontend="cpjku"`` with ``--set passt_frontend.mel_jitter=True`` is the CPJKU frontend
    with jitter; a field set back to its class default cannot override a preset's value).

    Raises:
      ValueError: naming the known frontends, for an unknown ``config.frontend``.
    """
    if config.frontend not in CONFIG_SECTIONS:
        raise ValueError(f"unknown frontend {config.frontend!r}; known: {sorted(CONFIG_SECTIONS)}")
    section = getattr(config, CONFIG_SECTIONS[config.frontend])
    defaults = type(section)()
    changed = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
               if getattr(section, f.name) != getattr(defaults, f.name)}
    return FRONTENDS.get(config.frontend)(changed)


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
