"""Data augmentations with storable parameters: device impulse responses (DIR), waveform roll,
frequency and time masking, Freq-MixStyle.

Each augmentation is one frozen dataclass: its fields are its settings (what a config sets),
and it carries

  * ``stage``: "wave" for (B, n_samples) waveforms, "mel" for (B, n_mels, n_frames) log-mels;
  * ``per_clip``: False when its parameters couple the examples of a batch (MixStyle's partner
    index), so they cannot be stored per clip in a teacher-logit store;
  * ``sample(key, batch_size, sr) -> params``: a small pytree of per-example arrays (leading
    axis = batch) that can be written to disk; ``sr`` is the sample rate of the waveform the
    batch comes from (the roll counts its shift in samples of it);
  * ``apply(x, params) -> x``: deterministic given ``params``;
  * ``host_only``: True when the op needs data that lives on the host (DIR reads its IR wavs):
    it runs only in the grain pipeline and in teacher precompute, on NumPy arrays, and the
    device-side functions (``augment_batch``, ``apply_augment``) refuse a config enabling it.
    Its draw depends on the clip (its recording device), not only on a key, so its ``sample``
    and ``apply`` take more (see ``DIRConfig``).

The split exists for knowledge distillation: teacher logits are precomputed offline under
sampled augmentation parameters (see ``asc_jax.distill``), and the student is later fed exactly
the same augmented input by replaying those parameters.

``AugmentConfig`` is the table of augmentations by name: one optional field per augmentation
(field name = name in stores and ``--set augment.<name>...``; None disables it), in application
order (except DIR, below). Adding an augmentation is one class here and one field there; ``augment_batch``,
``apply_augment``, ``example_sampler`` and the dict round trip read the table generically.

Order follows the CPJKU DCASE pipeline: convolve with a device IR (DIR), roll the waveform,
compute the log-mel, mask a frequency band (torchaudio ``FrequencyMasking`` inside the mel
frontend), then Freq-MixStyle. DIR and the roll run on the host in the grain pipeline
(``asc_jax.data.pipeline``), overlapping the device's step, with the same ``DIRConfig`` /
``RollConfig``: their bounds, draws and ops are defined once, here. DIR comes first in
application although it is the last field (a field appended keeps the others' PRNG keys, see
``AugmentConfig``): being host-only, it never runs in the generic loops, and the two places that
apply it, the pipeline and teacher precompute, do so before the roll.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from asc_jax import typed
from asc_jax.audio import impulse

Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Waveform roll
# ----------------------------------------------------------------------------------------------
def roll_waveform(wave, shift):
    """Circularly shift waveforms along the last axis: ``out[..., t] = wave[..., t - shift]``
    (the ``np.roll`` / ``torch.roll`` convention).

    Works on NumPy arrays on the host (the grain pipeline rolls there and reports its shift) and
    on JAX arrays on device, with identical results: a roll is a pure gather, so both paths are
    bit-exact.

    Args:
      wave: (..., n_samples) NumPy or JAX array.
      shift: integer array broadcastable to ``wave.shape[:-1]`` (a scalar for one clip).

    Returns:
      The rolled waveform, same type, shape and dtype as ``wave``.
    """
    xp = np if isinstance(wave, np.ndarray) and isinstance(shift, (np.ndarray, np.integer, int)) else jnp
    n = wave.shape[-1]
    shift = xp.broadcast_to(xp.asarray(shift), wave.shape[:-1])
    idx = xp.mod(xp.arange(n) - shift[..., None], n)
    return xp.take_along_axis(wave, idx, axis=-1)


@dataclasses.dataclass(frozen=True)
class RollConfig:
    """Circular time shift, uniform in [-max_shift, max_shift] samples (both ends included, like
    CPJKU's ``np.random.random_integers(-shift, shift)``)."""

    stage: ClassVar[str] = "wave"
    per_clip: ClassVar[bool] = True
    host_only: ClassVar[bool] = False
    max_shift_s: float = 0.125  # largest |shift| in seconds (CPJKU: roll=4000 samples at 32 kHz)

    def max_shift(self, sr: int) -> int:
        """The bound in samples of a waveform at ``sr`` Hz."""
        return int(round(self.max_shift_s * sr))

    def sample(self, key: jax.Array, batch_size: int, sr: int) -> Params:
        bound = self.max_shift(sr)
        return {"shift": jax.random.randint(key, (batch_size,), -bound, bound + 1, jnp.int32)}

    def sample_host(self, rng: np.random.Generator, sr: int) -> int:
        """One clip's shift on the host (the grain pipeline's per-element generator): the
        distribution of ``sample``."""
        bound = self.max_shift(sr)
        return int(rng.integers(-bound, bound + 1))

    def apply(self, wave, params: Params):
        return roll_waveform(wave, params["shift"])


# ----------------------------------------------------------------------------------------------
# Frequency masking (SpecAugment, torchaudio FrequencyMasking(iid_masks=True))
# ----------------------------------------------------------------------------------------------
def freq_mask_edges(params: Params, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional band edges ``[lo, hi)`` of stored masks in units of an ``n_mels``-bin frontend.

    Conversion rule: both frontends are assumed to span the same mel range (same fmin/fmax), and
    bin ``j`` of an ``n``-bin frontend is treated as the cell ``[j, j+1) / n`` of that range. A
    band ``[start, start+width)`` sampled for ``src = params["n_mels"]`` bins therefore covers
    ``[start, start+width) * n_mels / src`` target bins, and target bin ``j`` is masked iff its
    centre ``j + 0.5`` lies in ``[lo, hi)``. For 128 -> 256 every band maps to exactly twice its
    bins, ``[2 start, 2 start + 2 width)``; for an identical resolution it is the band itself.
    Going to a coarser grid, a band narrower than one target bin may cover no centre at all.
    """
    scale = n_mels / np.asarray(params["n_mels"], np.float64)
    lo = np.asarray(params["start"], np.float64) * scale
    hi = (np.asarray(params["start"], np.float64) + np.asarray(params["width"], np.float64)) * scale
    return lo, hi


def band_bins(start, width, src, n: int) -> jax.Array:
    """Boolean (B, n) mask of the cells hit by bands ``[start, start + width)`` drawn on an
    ``src``-cell grid, on an ``n``-cell grid over the same range (rule of ``freq_mask_edges``).

    The centre test ``lo <= j + 0.5 < hi`` is evaluated in integers, multiplied through by
    ``2 * src``, so the conversion is exact and identical on every backend.
    """
    src = jnp.asarray(src, jnp.int32)[:, None]
    start = jnp.asarray(start, jnp.int32)[:, None]
    end = start + jnp.asarray(width, jnp.int32)[:, None]
    centre2 = (2 * jnp.arange(n, dtype=jnp.int32) + 1)[None, :] * src
    return (centre2 >= 2 * start * n) & (centre2 < 2 * end * n)


def freq_mask_bins(params: Params, n_mels: int) -> jax.Array:
    """Boolean (B, n_mels) mask of the bins hit by each stored frequency band."""
    return band_bins(params["start"], params["width"], params["n_mels"], n_mels)


def _sample_band(key: jax.Array, batch_size: int, mask_param: int, n: int) -> tuple[jax.Array, jax.Array]:
    """(start, width) per example, drawn exactly like torchaudio's ``mask_along_axis_iid``:

        value = U[0, 1) * mask_param;  min_value = U[0, 1) * (n - value)
        start = floor(min_value);      width = floor(value)    (so width is 0 .. mask_param-1)
    """
    if not 0 <= mask_param <= n:
        raise ValueError(f"mask_param={mask_param} must lie in [0, {n}]")
    k_value, k_start = jax.random.split(key)
    value = jax.random.uniform(k_value, (batch_size,)) * mask_param
    min_value = jax.random.uniform(k_start, (batch_size,)) * (n - value)
    return jnp.floor(min_value).astype(jnp.int32), jnp.floor(value).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class FreqMaskConfig:
    """One frequency band per example set to ``mask_value``."""

    stage: ClassVar[str] = "mel"
    per_clip: ClassVar[bool] = True
    host_only: ClassVar[bool] = False
    mask_param: int = 48  # torchaudio mask_param: width = floor(U[0, mask_param)) bins
    # Mel resolution the bands are drawn in (recorded in the params, so a frontend of another
    # resolution converts them, `freq_mask_edges`, instead of misplacing them).
    n_mels: int = 256
    mask_value: float = 0.0  # value written into the band (torchaudio default 0, on the log-mel)

    def sample(self, key: jax.Array, batch_size: int, sr: int | None = None) -> Params:
        """One band per example (torchaudio's draw, ``_sample_band``).

        Returns:
          {"start", "width", "n_mels"}: int32 (B,).
        """
        del sr  # bands are in mel bins
        start, width = _sample_band(key, batch_size, self.mask_param, self.n_mels)
        return {"start": start, "width": width, "n_mels": jnp.full((batch_size,), self.n_mels, jnp.int32)}

    def apply(self, mel: jax.Array, params: Params) -> jax.Array:
        """Write ``mask_value`` into each example's band of a (B, n_mels, n_frames) log-mel."""
        mask = freq_mask_bins(params, mel.shape[-2])
        return jnp.where(mask[:, :, None], jnp.asarray(self.mask_value, mel.dtype), mel)


@dataclasses.dataclass(frozen=True)
class TimeMaskConfig:
    """One span of frames per example set to ``mask_value`` (torchaudio TimeMasking, iid).

    Drawn on a grid of ``n_frames`` frames per clip and recorded with it, so a frontend with
    another frame rate masks the same stretch of time (the conversion of ``band_bins``).
    """

    stage: ClassVar[str] = "mel"
    per_clip: ClassVar[bool] = True
    host_only: ClassVar[bool] = False
    mask_param: int = 20  # width = floor(U[0, mask_param)) frames (CPJKU's PaSST recipe: 20)
    n_frames: int = 100  # frames per clip the span is drawn on (PaSST: 100 per 1-s clip)
    mask_value: float = 0.0  # in log-mel units, like FreqMaskConfig.mask_value

    def sample(self, key: jax.Array, batch_size: int, sr: int | None = None) -> Params:
        """Returns {"start", "width", "n_frames"}: int32 (B,)."""
        del sr
        start, width = _sample_band(key, batch_size, self.mask_param, self.n_frames)
        return {"start": start, "width": width, "n_frames": jnp.full((batch_size,), self.n_frames, jnp.int32)}

    def apply(self, mel: jax.Array, params: Params) -> jax.Array:
        """Write ``mask_value`` into each example's span of a (B, n_mels, n_frames) log-mel."""
        mask = band_bins(params["start"], params["width"], params["n_frames"], mel.shape[-1])
        return jnp.where(mask[:, None, :], jnp.asarray(self.mask_value, mel.dtype), mel)


# ----------------------------------------------------------------------------------------------
# Freq-MixStyle
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MixStyleConfig:
    """Freq-MixStyle: per-frequency statistics mixed with a partner example's."""

    stage: ClassVar[str] = "mel"
    per_clip: ClassVar[bool] = False  # the partner index couples the batch
    # Reads other examples of the batch (the partner's statistics): under a data-parallel
    # shard_map, `apply` gathers them from every device (augment_batch passes `axis_name`).
    couples_batch: ClassVar[bool] = True
    host_only: ClassVar[bool] = False
    alpha: float = 0.3  # Beta(alpha, alpha) for the mixing weight lambda
    p: float = 0.7  # probability of applying MixStyle
    eps: float = 1e-6  # added to the variance before the square root (reference value)
    # The reference flips ONE coin per batch (`if np.random.rand() > p: return x`); True flips an
    # independent coin per example instead. Both are stored as a per-example flag.
    per_example: bool = False

    def sample(self, key: jax.Array, batch_size: int, sr: int | None = None) -> Params:
        """Returns {"apply": bool (B,), "lmda": float32 (B,), "perm": int32 (B,) partner index}."""
        del sr
        k_apply, k_lmda, k_perm = jax.random.split(key, 3)
        coin_shape = (batch_size,) if self.per_example else ()
        apply = jnp.broadcast_to(jax.random.uniform(k_apply, coin_shape) < self.p, (batch_size,))
        lmda = jax.random.beta(k_lmda, self.alpha, self.alpha, (batch_size,), jnp.float32)
        perm = jax.random.permutation(k_perm, batch_size).astype(jnp.int32)
        return {"apply": apply, "lmda": lmda, "perm": perm}

    def apply(self, mel: jax.Array, params: Params, axis_name: str | None = None) -> jax.Array:
        """Freq-MixStyle on a (B, n_mels, n_frames) log-mel.

        Transcribes ``mixstyle`` from the CPJKU DCASE code (cpjku_dcase23 ``helpers/utils.py``,
        CPJKU/dcase2024_task1_baseline ``helpers/utils.py``; there the input is (B, 1, F, T) and
        the statistics are taken over dims [1, 3], i.e. per example and frequency bin over time):

            f_mu = x.mean(dim=[1, 3]); f_sig = sqrt(x.var(dim=[1, 3]) + eps)   # torch var: ddof=1
            f_mu, f_sig = detach(...)
            x_normed = (x - f_mu) / f_sig
            lmda ~ Beta(alpha, alpha) per example; perm = randperm(B)
            mu_mix = f_mu * lmda + f_mu[perm] * (1 - lmda)   (same for sig)
            x = x_normed * sig_mix + mu_mix

        Here the coin flip, ``lmda`` and ``perm`` come from ``params``; examples whose ``apply``
        flag is False are returned unchanged (bit-exact).

        ``axis_name``: ``mel`` is this device's shard of a batch split over that shard_map axis,
        ``params`` its rows of the global batch's; ``perm`` indexes the global batch, whose
        statistics are gathered from every device (as one device would compute them).
        """
        mu = jnp.mean(mel, axis=-1, keepdims=True)
        sig = jnp.sqrt(jnp.var(mel, axis=-1, ddof=1, keepdims=True) + self.eps)
        mu, sig = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(sig)
        x_normed = (mel - mu) / sig
        lmda = params["lmda"].astype(mel.dtype)[:, None, None]
        perm = params["perm"]
        mu_all, sig_all = mu, sig
        if axis_name is not None:
            mu_all, sig_all = (jax.lax.all_gather(v, axis_name, tiled=True) for v in (mu, sig))
        mu_mix = mu * lmda + mu_all[perm] * (1 - lmda)
        sig_mix = sig * lmda + sig_all[perm] * (1 - lmda)
        return jnp.where(params["apply"][:, None, None], x_normed * sig_mix + mu_mix, mel)


# ----------------------------------------------------------------------------------------------
# Device impulse responses (DIR)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DIRConfig:
    """Device impulse-response augmentation (Morocutti et al. 2023, "Device-robust acoustic scene
    classification via impulse response augmentation"; the CPJKU DCASE2023 system, p = 0.6).

    Each training clip recorded by one of ``devices`` (TAU's reference device "a" by default)
    is, with probability ``p``, convolved with an IR drawn uniformly from the wavs of ``folder``:
    ``x <- (x * ir)[:len(x)]``, the 'full' convolution cut to the clip (``impulse.convolve_ir``;
    CPJKU: ``scipy.signal.convolve(x, ir, 'full')[:len(x)]``). It simulates recording the clip
    with another device, so that the many device-"a" clips teach device invariance. As in the
    CPJKU pipeline (DIR dataset wrapper inside the roll), it is applied before the roll.

    Params per clip: {"ir": int32 index into the folder's sorted IRs, -1 = not applied}. The
    decision (device, coin) and the pick are one draw, ``sample`` (stores, per-clip JAX keys) or
    ``sample_host`` (the grain pipeline's per-element generator), of one distribution; ``apply``
    is the one op, whether the index was drawn now or replayed from a teacher store.
    """

    stage: ClassVar[str] = "wave"
    per_clip: ClassVar[bool] = True
    host_only: ClassVar[bool] = True  # needs the IR wavs: grain pipeline and precompute only
    folder: str = ""  # folder of IR wavs at the pipeline's sample rate (required when enabled)
    p: float = 0.6  # probability of convolving an eligible clip (CPJKU DCASE2023: 0.6)
    devices: tuple[str, ...] = ("a",)  # devices whose clips are convolved (filename's last field)

    def __post_init__(self):
        if not isinstance(self.devices, tuple) or not all(isinstance(d, str) for d in self.devices):
            raise TypeError(f"DIRConfig.devices must be a tuple of device names, got {self.devices!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"DIRConfig.p must lie in [0, 1], got {self.p}")

    def load(self, sr: int) -> impulse.IRBank:
        """The IRs of ``folder`` at ``sr`` Hz, checked (``impulse.load_irs``)."""
        return impulse.load_irs(self.folder, sr)

    def applies_to(self, device: str) -> bool:
        """Whether clips of ``device`` may be convolved."""
        return device in self.devices

    def sample(self, key: jax.Array, eligible: jax.Array, n_irs: int) -> Params:
        """IR indices of a batch from one key (teacher stores draw per clip, ``example_sampler``).

        Args:
          eligible: bool (B,), ``applies_to`` of each clip's device.
          n_irs: how many IRs the folder holds.

        Returns:
          {"ir": int32 (B,)}: a uniform pick where an eligible clip's coin is below ``p``, else -1.
        """
        k_coin, k_pick = jax.random.split(key)
        coin = jax.random.uniform(k_coin, eligible.shape) < self.p
        pick = jax.random.randint(k_pick, eligible.shape, 0, n_irs, jnp.int32)
        return {"ir": jnp.where(eligible & coin, pick, -1).astype(jnp.int32)}

    def sample_host(self, rng: np.random.Generator, device: str, n_irs: int) -> int:
        """One clip's IR index on the host (the grain pipeline's generator): ``sample``'s
        distribution. A clip of another device draws nothing."""
        if not self.applies_to(device) or rng.random() >= self.p:
            return -1
        return int(rng.integers(n_irs))

    def apply(self, wave: np.ndarray, params: Params, irs: impulse.IRBank) -> np.ndarray:
        """Convolve each clip with its IR (``params["ir"]``; -1 leaves it as it is, bit for bit).

        Args:
          wave: (n,) clip with a scalar index, or (B, n) clips with (B,) indices, on the host.
          irs: the bank the indices point into (``load``).

        Returns:
          float32 waveform(s) of ``wave``'s shape (``wave`` itself where nothing is convolved).
        """
        index = np.asarray(params["ir"])
        if wave.ndim == 1:
            return wave if index < 0 else impulse.convolve_ir(wave, irs.ir(int(index)))
        out = np.array(wave, np.float32)
        for b in np.flatnonzero(index >= 0):
            out[b] = impulse.convolve_ir(wave[b], irs.ir(int(index[b])))
        return out


# ----------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The augmentations by name, one optional field each (None disables it).

    Field order is application order within a stage; the field index keys the PRNG.
    """

    roll: RollConfig | None = RollConfig()  # waveform roll
    freq_mask: FreqMaskConfig | None = FreqMaskConfig()  # one frequency band masked per example
    mixstyle: MixStyleConfig | None = MixStyleConfig()  # Freq-MixStyle (couples the batch)
    # Time masking (off in the students' recipe). Last, so that adding it kept the PRNG keys of
    # the others (field index): it runs after Freq-MixStyle, whose per-frequency statistics over
    # time therefore see the unmasked clip.
    time_mask: TimeMaskConfig | None = None
    # Device impulse responses (off by default: it needs a folder of IR wavs). Last for the same
    # reason; it is applied first, before the roll, by the host pipeline (module docstring).
    dir: DIRConfig | None = None


def augmentation_types() -> dict[str, type]:
    """{name: augmentation class} in application order, read from ``AugmentConfig``'s fields."""
    hints = typing.get_type_hints(AugmentConfig)
    return {f.name: next(t for t in typing.get_args(hints[f.name]) if t is not type(None))
            for f in dataclasses.fields(AugmentConfig)}


def per_clip(name: str) -> bool:
    """Whether augmentation ``name``'s parameters can be stored per clip (not MixStyle's)."""
    return augmentation_types()[name].per_clip


def enabled(cfg: AugmentConfig) -> list[tuple[int, str, Any]]:
    """(field index, name, augmentation) of every enabled augmentation, in order.

    The field index (not the position among enabled ones) keys the PRNG, so disabling one
    augmentation does not change what the others sample.
    """
    return [(i, f.name, getattr(cfg, f.name)) for i, f in enumerate(dataclasses.fields(cfg))
            if getattr(cfg, f.name) is not None]


def _refuse_host_only(cfg: AugmentConfig, what: str) -> None:
    host = [name for _, name, op in enabled(cfg) if op.host_only]
    if host:
        raise ValueError(
            f"{what} runs on device, but augmentations {host} run on the host (they read files: "
            "the IR wavs), in the grain pipeline and in teacher precompute; apply them there and "
            f"pass this config with them disabled: dataclasses.replace(cfg, {host[0]}=None)")


def _stage_of(x) -> str:
    if x.ndim == 2:
        return "wave"
    if x.ndim == 3:
        return "mel"
    raise ValueError(
        f"augment input must be a (B, n_samples) waveform or (B, n_mels, n_frames) log-mel batch, "
        f"got shape {x.shape}"
    )


def augment_batch(
    key: jax.Array, x: jax.Array, cfg: AugmentConfig, params: Params | None = None, *,
    sr: int | None = None, axis_name: str | None = None,
) -> tuple[jax.Array, Params]:
    """Augment a batch on device, sampling whatever ``params`` does not provide.

    The stage is read from the rank: (B, n_samples) runs the "wave" augmentations, (B, n_mels,
    n_frames) the "mel" ones. Jit with ``cfg`` (and ``sr``) static.

    Args:
      key: PRNG key; augmentation ``i`` of the config uses ``fold_in(key, i)``.
      x: waveform or log-mel batch.
      cfg: which augmentations run and their settings.
      params: optional {name: params} to replay (e.g. from a teacher-logit store); names missing
        here are sampled.
      sr: sample rate of the waveform; needed to sample a roll.
      axis_name: ``x`` is this device's shard of a batch split over that shard_map axis (the
        data-parallel step, `asc_jax.parallel.shard_step`). Parameters are then sampled for
        the global batch with ``key`` (the same on every device) and each device takes its
        rows, and MixStyle gathers its partners' statistics, so that the devices together
        augment exactly as one device augments the global batch. Replayed ``params`` are
        already the shard's rows.

    Returns:
      (augmented batch, {name: params used}) for the augmentations of this stage.
    """
    _refuse_host_only(cfg, "augment_batch")
    stage = _stage_of(x)
    params = params or {}
    used = {}
    for i, name, op in enabled(cfg):
        if op.stage != stage:
            continue
        if name not in params and op.stage == "wave" and sr is None:
            raise ValueError(f"sampling {name!r} needs the waveform's sample rate (sr)")
        if name in params:
            p = params[name]
        elif axis_name is None:
            p = op.sample(jax.random.fold_in(key, i), x.shape[0], sr)
        else:
            p = _shard_rows(op.sample(jax.random.fold_in(key, i), x.shape[0] * jax.lax.axis_size(axis_name), sr),
                            x.shape[0], axis_name)
        coupled = axis_name is not None and getattr(op, "couples_batch", False)
        x = op.apply(x, p, axis_name=axis_name) if coupled else op.apply(x, p)
        used[name] = p
    return x, used


def _shard_rows(params: Params, rows: int, axis_name: str) -> Params:
    """This device's `rows` rows of every (global batch, ...) parameter array."""
    start = jax.lax.axis_index(axis_name) * rows
    return jax.tree.map(lambda v: jax.lax.dynamic_slice_in_dim(v, start, rows), params)


def apply_augment(x: jax.Array, params: Params, cfg: AugmentConfig) -> jax.Array:
    """Replay stored parameters: apply every enabled augmentation of ``x``'s stage, each of which
    must have its parameters in ``params`` (a missing one is an error, never sampled)."""
    _refuse_host_only(cfg, "apply_augment")
    stage = _stage_of(x)
    for _, name, op in enabled(cfg):
        if op.stage != stage:
            continue
        if name not in params:
            raise KeyError(f"no stored parameters for augmentation {name!r}; have {sorted(params)}")
        x = op.apply(x, params[name])
    return x


def example_sampler(cfg: AugmentConfig, sr: int, *, n_irs: int | None = None
                    ) -> Callable[..., Params]:
    """Per-clip sampler for a teacher-logit store: ``sample(keys (B,), devices=None) ->
    {name: params (B, ...)}``.

    Each example's parameters depend only on its own key (and, for DIR, its device), so a store
    can derive the key from (seed, clip index, view) and be reproducible whatever the batching.
    Augmentation ``i`` uses ``fold_in(key, i)``, as in ``augment_batch``. Covers both stages;
    ``sr`` is the sample rate of the stored clips.

    Args:
      cfg: the store's augmentations.
      sr: sample rate of the stored clips.
      n_irs: the number of IRs in DIR's folder; required when ``cfg.dir`` is enabled.

    Returns:
      ``sample(keys, devices)``: ``devices`` holds each clip's recording device (``Clip.device``),
      required when DIR is enabled (it convolves only some devices' clips).

    Raises:
      ValueError: if ``cfg`` enables an augmentation whose parameters couple the batch
        (MixStyle): disable it in the store's config and let student training apply it fresh.
        Also for DIR without ``n_irs`` (and, from ``sample``, without ``devices``).
    """
    ops = enabled(cfg)
    coupled = [name for _, name, op in ops if not op.per_clip]
    if coupled:
        raise ValueError(
            f"augmentations {coupled} couple the examples of a batch and cannot be stored per "
            "clip; set them to None in the store's AugmentConfig (apply them fresh in training)"
        )
    host = [(name, op) for _, name, op in ops if op.host_only]
    if host and not n_irs:
        raise ValueError(f"sampling {[name for name, _ in host]} needs n_irs, the size of the IR folder")

    def one(key, eligible):
        out = {}
        for i, name, op in ops:
            k = jax.random.fold_in(key, i)
            params = op.sample(k, eligible[name][None], n_irs) if op.host_only else op.sample(k, 1, sr)
            out[name] = jax.tree.map(lambda a: a[0], params)
        return out

    batched = jax.jit(jax.vmap(one))

    def sample(keys: jax.Array, devices: Sequence[str] | None = None) -> Params:
        if host and devices is None:
            raise ValueError(f"sampling {[name for name, _ in host]} needs each clip's device (devices=)")
        if devices is not None and len(devices) != len(keys):
            raise ValueError(f"{len(devices)} devices for {len(keys)} keys")
        eligible = {name: np.array([op.applies_to(d) for d in devices], bool) for name, op in host}
        return batched(keys, eligible)

    return sample


def config_to_dict(cfg: AugmentConfig) -> dict:
    """JSON-able description of ``cfg`` (for store headers); inverse of ``config_from_dict``."""
    return {name: (None if sub is None else dataclasses.asdict(sub)) for name, sub in
            ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}


def config_from_dict(d: dict) -> AugmentConfig:
    types = augmentation_types()
    unknown = set(d) - set(types)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; known: {sorted(types)}")
    # Type-checked like a config override: JSON gives lists where the classes hold tuples.
    return AugmentConfig(**{name: None if d.get(name) is None else typed.make(cls, d[name], f"{name} field")
                            for name, cls in types.items()})
