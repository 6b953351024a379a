"""Typed, frozen experiment configuration.

A config file in `configs/` defines `get_config(arg: str | None) -> Config`; `arg` is the text
after the colon in `--config configs/x.py:split=25,width=96` (parsed by `parse_variant`).
`--set optim.lr=0.005` overrides any field by dotted path (`override`), type-checked against the
field's declared type, so a typo fails before any work is done.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jax.numpy as jnp
import optax
from flax import nnx

from asc_jax import typed
from asc_jax.audio.augment import AugmentConfig
from asc_jax.audio.features import MelConfig
from asc_jax.audio.frontends import CONFIG_SECTIONS
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig
from asc_jax.parallel import ParallelConfig
from asc_jax.prune import PruneConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    root: str = "data/synthetic_tau"  # Dataset root in TAU layout (meta.csv, split*.csv, audio/).
    generate: bool = True  # Generate the embedded synthetic dataset at `root` if it is missing.
    # asc_jax.data.synthetic.SyntheticConfig overrides for the generated set (size, seed, profile).
    synthetic: Mapping[str, int | str] = dataclasses.field(default_factory=dict)
    train_split: str = "100"  # DCASE2024 split: "5", "10", "25", "50" or "100" (percent).
    eval_split: str = "test"  # Split evaluated during and after training.
    cache_audio: bool = True  # Keep decoded 32 kHz clips in RAM after the first read.
    worker_count: int = 0  # grain worker processes (0 = in-process).
    on_error: str = "raise"  # Bad clips: "raise", or "skip" (reported, never silent).
    # Recording devices the training split is restricted to ("a", "s1", ...; () keeps every
    # device): DCASE2025's device-specific fine-tuning (asc_jax.device_specific). The eval split
    # is never filtered, so a device's run is still measured on every device.
    devices: tuple[str, ...] = ()
    # Keep the training split on the accelerator (int16 waveforms, one scale per clip) and draw
    # every batch there: shuffle, roll and gather run inside the jitted step, so the host only
    # dispatches (asc_jax.train.device_data). Off: the grain pipeline feeds batches from the host.
    on_device: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "rep_mobile"  # Registered model name (asc_jax.models.MODELS).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Model config overrides.
    # Saved model dir (asc_jax.checkpoint.save_model) whose weights initialise training; loaded
    # strictly, so it must be the same architecture and width (e.g. a sliced, pruned model).
    init_from: str = ""

    def build(self, rngs: nnx.Rngs, *, deploy: bool = False) -> nnx.Module:
        from asc_jax.models import build_model
        kwargs = dict(self.options)
        if deploy:
            kwargs["deploy"] = True
        return build_model(self.name, rngs=rngs, **kwargs)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01  # Peak learning rate (paper: 0.01).
    epochs: int = 150  # Training epochs (paper: 150).
    warmup_epochs: int = 5  # Linear warmup 0 -> lr, then cosine decay to 0 (paper: 5).
    batch_size: int = 128  # Global batch size (paper: 128).
    b1: float = 0.9  # Adam beta1.
    b2: float = 0.999  # Adam beta2.
    weight_decay: float = 0.0  # Decoupled weight decay (AdamW) if > 0.
    grad_clip: float = 0.0  # Clip the global gradient norm to this if > 0.
    # "warmup_cosine": linear warmup over warmup_epochs, cosine decay to 0 (the students').
    # "exp_warmup_linear_down": CPJKU's per-epoch schedule of their PaSST teachers
    # (cpjku_dcase23 helpers/lr_schedule.py exp_warmup_linear_down): exp(-5 (1 - e/W)^2) warmup
    # for W = warmup_epochs, constant to ramp_down_start, linear over ramp_down_epochs down to
    # last_lr_factor * lr, then constant.
    lr_schedule: str = "warmup_cosine"
    ramp_down_start: int = 3
    ramp_down_epochs: int = 10
    last_lr_factor: float = 0.01
    # Optimiser steps per host dispatch: > 1 runs them as one `lax.scan` (where dispatch, not
    # compute, bounds a small model on a fast accelerator). Evaluation and checkpoints happen at
    # their usual steps (a dispatch never crosses an epoch's end); logging at the first dispatch
    # end on or after each multiple of log_every_steps.
    steps_per_dispatch: int = 1
    # "bfloat16": the train step computes the model in bfloat16 (parameters and features cast
    # inside the step); master weights, optimiser state, BatchNorm statistics and the loss stay
    # float32. Evaluation and the saved models are float32.
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.lr_schedule not in ("warmup_cosine", "exp_warmup_linear_down"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; known: warmup_cosine, "
                             "exp_warmup_linear_down")
        if self.steps_per_dispatch < 1:
            raise ValueError(f"optim.steps_per_dispatch must be >= 1, got {self.steps_per_dispatch}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"optim.compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")

    def schedule(self, steps_per_epoch: int) -> optax.Schedule:
        if self.lr_schedule == "exp_warmup_linear_down":
            return self._exp_warmup_linear_down(steps_per_epoch)
        total = max(1, self.epochs * steps_per_epoch)
        warmup = min(self.warmup_epochs * steps_per_epoch, total - 1)
        return optax.warmup_cosine_decay_schedule(0.0, self.lr, warmup, total, end_value=0.0)

    def _exp_warmup_linear_down(self, steps_per_epoch: int) -> optax.Schedule:
        warmup, start, length, last = (self.warmup_epochs, self.ramp_down_start, self.ramp_down_epochs,
                                       self.last_lr_factor)

        def schedule(step):
            # The reference steps a LambdaLR once per epoch: the factor is constant within one.
            epoch = jnp.floor_divide(step, steps_per_epoch).astype(jnp.float32)
            phase = 1.0 - jnp.clip(epoch, 0.5, max(warmup, 0.5)) / max(warmup, 1)
            rampup = jnp.where(epoch < warmup, jnp.exp(-5.0 * phase * phase), 1.0)
            down = last + (1.0 - last) * (length - epoch + start) / max(length, 1)
            rampdown = jnp.where(epoch <= start, 1.0, jnp.where(epoch - start < length, down, last))
            return self.lr * rampup * rampdown

        return schedule

    def build(self, steps_per_epoch: int) -> optax.GradientTransformation:
        lr = self.schedule(steps_per_epoch)
        opt = (optax.adamw(lr, self.b1, self.b2, weight_decay=self.weight_decay)
               if self.weight_decay > 0 else optax.adam(lr, self.b1, self.b2))
        return optax.chain(optax.clip_by_global_norm(self.grad_clip), opt) if self.grad_clip > 0 else opt


@dataclasses.dataclass(frozen=True)
class KDConfig:
    store: str = ""  # Teacher-logit store directory; "" trains without distillation.
    teachers: str = "all"  # Named teacher ensemble from the store (asc_jax.distill ENSEMBLES).
    lam: float = 0.02  # Weight of the label cross-entropy; 1 - lam goes to the KD term.
    tau: float = 2.0  # Softmax temperature of student and teachers.
    scale_by_tau_sq: bool = True  # Multiply the KL term by tau^2 (Hinton et al.).


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0  # Seeds parameters, data order and augmentation (split into named keys).
    data: DataConfig = DataConfig()
    # The model's frontend (asc_jax.audio.frontends): "logmel", the students' log-mel with the
    # settings of `mel`, or "passt", PaSST's own log-mel with those of `passt_frontend`. Saved in
    # model.json, so predict / export / teacher precompute use the same one.
    frontend: str = "logmel"
    mel: MelConfig = MelConfig()
    passt_frontend: PaSSTFrontendConfig = PaSSTFrontendConfig()
    augment: AugmentConfig = AugmentConfig()  # Roll (host, grain), freq-mask + Freq-MixStyle (device).
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    kd: KDConfig = KDConfig()
    parallel: ParallelConfig = ParallelConfig()  # Data-parallel devices / multi-host settings.
    eval_every_epochs: int = 5  # Evaluate (and keep best-N checkpoints) every this many epochs.
    keep_best: int = 3  # Best-N checkpoints by eval macro accuracy.
    log_every_steps: int = 20  # Console/CSV/TensorBoard logging period.
    max_steps: int = 0  # Stop after this many steps if > 0 (smoke tests, interruption tests).
    # Progressive pruning: train the wide model, then prune + finetune in phases (train.progressive).
    prune: PruneConfig | None = None

    def __post_init__(self):
        if self.frontend not in CONFIG_SECTIONS:
            raise ValueError(f"unknown frontend {self.frontend!r}; known: {sorted(CONFIG_SECTIONS)}")


def parse_variant(arg: str | None, defaults: Mapping[str, Any], *, config: str = "config") -> dict[str, Any]:
    """"split=25,width=96" -> {**defaults, "split": "25", "width": 96}.

    Values are parsed as Python literals (bare words are strings) and checked against the type of
    their default (a default of None accepts any value: an optional variant). A key that is not
    in `defaults` is an error naming the known keys, so `epoch=1` cannot be silently ignored.

    Args:
      arg: the text after the colon of `--config configs/x.py:...` (None: all defaults).
      defaults: every variant key the config file understands, with its default value.
      config: the config file's name, for the error messages.
    """
    given: dict[str, Any] = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{config}: variant {item!r} is not key=value")
        given[key.strip()] = _literal(value.strip())
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{config}: unknown variant {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(defaults)}")
    return {k: default if k not in given else
            given[k] if default is None else typed.check(type(default), given[k], f"{config} variant {k!r}")
            for k, default in defaults.items()}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: name=rep_mobile


def load_config(spec: str) -> Config:
    """Loads `path/to/config.py[:variant]` and calls its `get_config(variant)`."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_asc_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} defines no get_config(arg)")
    config = module.get_config(arg or None)
    if not isinstance(config, Config):
        raise TypeError(f"{path}: get_config returned {type(config).__name__}, expected Config")
    return config


def override(config: Any, assignment: str) -> Any:
    """Applies one `dotted.path=value` override, checking the path and the value's type."""
    path, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"override {assignment!r} is not key=value")
    return _replace(config, path.strip().split("."), _literal(text.strip()), path.strip())


def _replace(node: Any, keys: list[str], value: Any, full: str) -> Any:
    key, rest = keys[0], keys[1:]
    if isinstance(node, Mapping):  # free-form option dicts (model options)
        return {**node, key: _replace(node.get(key), rest, value, full) if rest else value}
    if not dataclasses.is_dataclass(node):
        raise KeyError(f"override {full!r}: {key!r} is not a config field")
    fields = {f.name: f for f in dataclasses.fields(node)}
    if key not in fields:
        raise KeyError(f"override {full!r}: {type(node).__name__} has no field {key!r}; "
                       f"fields: {', '.join(fields)}")
    if rest:
        child = getattr(node, key)
        if child is None:  # a disabled optional section (augment.time_mask): enable its defaults
            child = _optional_section(node, key, full)
        return dataclasses.replace(node, **{key: _replace(child, rest, value, full)})
    return dataclasses.replace(node, **{key: _coerce(node, key, value, full)})


def _optional_section(node: Any, key: str, full: str) -> Any:
    """The default instance of field ``key``'s dataclass type (``X | None``), so that
    ``--set augment.dir.folder=/irs`` enables a section that is None and sets one field."""
    hint = typed.field_hints(type(node))[key]
    classes = [t for t in typing.get_args(hint) if dataclasses.is_dataclass(t)]
    if len(classes) != 1:
        raise KeyError(f"override {full!r}: {key!r} is None and not an optional config section")
    return classes[0]()


def _coerce(node: Any, key: str, value: Any, full: str) -> Any:
    return typed.check(typed.field_hints(type(node))[key], value, f"override {full!r}")


def to_dict(config: Any) -> Any:
    """JSON-friendly view of a config (for the run's config.json)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple):
        return [to_dict(v) for v in config]
    return config


# Fields that may differ between a run and its continuation (or a finished run and a rerun of its
# command): they bound how far a run goes, not what it computes.
RESUMABLE_FIELDS = ("max_steps",)
# Fields removed from the config classes, with the stored values that mean what the code does now
# (None: any value): a run that stored one of them computed what the code computes today.
RETIRED_FIELDS: Mapping[str, tuple | None] = {
    # Masked finetuning is gone: pruning runs only ever recorded "sliced" and start epoch 0 (the
    # phases refused anything else before writing config.json); the flag only served masking.
    "prune.finetune": ("sliced",),
    "prune.start_epoch": (0,),
    "prune.allow_inexact_masking": None,
    # The roll's bound was always counted at the stream's rate (config.mel.sample_rate); this
    # field only fed a teacher-store check, which now reads the store's recorded rate.
    "augment.roll.sr": None,
}
_ABSENT = object()  # a stored value nothing equals: the run had no value for this field
# Fields added to the config classes whose default does NOT keep the old behaviour: a run stored
# before them computed something no value of theirs reproduces, so it never counts as the same.
# (Every other added field's default is the old behaviour: see `config_diff`.)
BEHAVIOUR_CHANGING_FIELDS: tuple[str, ...] = (
    # Before them a pruning round finetuned at optim.lr, warming up over min(warmup_epochs, half
    # the round) and ending the round at the peak learning rate; now each round has its own
    # schedule (a tenth of the dense lr by default, cosine to 0 within the round).
    "prune.finetune_lr",
    "prune.finetune_warmup_epochs",
)


def config_diff(stored: Any, current: Config, *, ignore: Sequence[str] = RESUMABLE_FIELDS) -> list[str]:
    """Dotted fields where a run's stored config (its config.json, as loaded) differs from `current`.

    A field the stored config lacks was added to the config classes after the run: it differs only
    if `current` sets it away from its default (the default keeps the old behaviour, so a run
    survives code growth), or always for BEHAVIOUR_CHANGING_FIELDS. A field only the stored config has (since removed) differs, unless
    RETIRED_FIELDS says that its stored value is what the code does now. Where the run stored a
    value (e.g. prune=None) and `current` has a section, every field of the section differs.
    Free-form mappings (model.options, data.synthetic) are compared whole.

    Args:
      stored: the run's config as JSON gave it back.
      current: the config now asked for.
      ignore: dotted fields (and the fields below them) never reported.

    Returns:
      The differing fields in declaration order ([] when the run can go on with `current`).
    """
    return [name for name in _diff(stored, current, ())
            if not any(name == f or name.startswith(f + ".") for f in ignore)]


def _diff(stored: Any, current: Any, path: tuple[str, ...]) -> Iterator[str]:
    if not dataclasses.is_dataclass(current):
        if stored is _ABSENT or stored != _json(current):
            yield ".".join(path)
        return
    fields = dataclasses.fields(current)
    node = stored if isinstance(stored, Mapping) else {}
    for field in fields:
        # A field missing from a stored section had its default; one under a stored non-section
        # value (or with no default) had nothing comparable.
        default = _field_default(field) if isinstance(stored, Mapping) else _ABSENT
        if ".".join(path + (field.name,)) in BEHAVIOUR_CHANGING_FIELDS:
            default = _ABSENT
        yield from _diff(node.get(field.name, default), getattr(current, field.name), path + (field.name,))
    names = {f.name for f in fields}
    for key, value in node.items():
        name = ".".join(path + (key,))
        if key not in names and not _retired(name, value):
            yield name


def _retired(name: str, value: Any) -> bool:
    """Whether `name`, a field the config classes no longer have, stored what the code does now."""
    same = RETIRED_FIELDS.get(name, ())
    return same is None or value in same


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return _json(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _json(field.default_factory())
    return _ABSENT


def _json(value: Any) -> Any:
    """`value` as config.json gives it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(to_dict(value)))
