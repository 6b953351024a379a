"""The JAX log-mel frontend against librosa (the reference implementation)."""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from asc_jax.audio.features import MelConfig, log_mel, mel_spectrogram

CFG = MelConfig()


def _librosa_mel(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="constant", power=2.0,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=cfg.htk, norm=cfg.norm)


def _inputs():
    rng = np.random.default_rng(0)
    t = np.arange(CFG.sample_rate) / CFG.sample_rate
    return {
        "noise": rng.standard_normal(CFG.sample_rate).astype(np.float32) * 0.1,
        "sine": (0.5 * np.sin(2 * np.pi * 1234.5 * t)).astype(np.float32),
        "chirp": librosa.chirp(fmin=50, fmax=15000, sr=CFG.sample_rate, duration=1.0).astype(np.float32),
    }


def test_frame_count_one_second_is_63():
    wave = jnp.zeros((2, CFG.sample_rate))
    assert log_mel(wave, CFG).shape == (2, 256, 63)
    assert CFG.n_frames(CFG.sample_rate) == 63


@pytest.mark.parametrize("name", ["noise", "sine", "chirp"])
def test_mel_power_matches_librosa(name):
    wave = _inputs()[name]
    ref = _librosa_mel(wave, CFG)
    ours = np.asarray(jax.jit(mel_spectrogram, static_argnums=1)(jnp.asarray(wave)[None], CFG))[0]
    assert ours.shape == ref.shape
    # Relative to the spectrogram's peak: float32 FFT rounding is absolute, so per-bin relative
    # error is meaningless in bins with (near) zero power, e.g. far from a sine's frequency.
    rel = np.abs(ours - ref).max() / ref.max()
    assert rel < 1e-4, rel
    # Where the power is substantial, the per-bin relative error is small too.
    big = ref > 1e-3 * ref.max()
    assert (np.abs(ours - ref)[big] / ref[big]).max() < 1e-3


def test_log_mel_batched_equals_per_example():
    waves = np.stack(list(_inputs().values()))
    batched = np.asarray(log_mel(jnp.asarray(waves), CFG))
    for i, w in enumerate(waves):
        ref = np.log(_librosa_mel(w, CFG) + CFG.log_floor)
        np.testing.assert_allclose(batched[i], ref, atol=2e-3, rtol=0)


@pytest.mark.parametrize("frontend", ["student", "passt"])
def test_stft_core_matches_jax_scipy_stft(frontend):
    """The one STFT core (`stft_power`) of both frontends equals the library's STFT,
    `jax.scipy.signal.stft`, to 1e-6 of the peak power: with the window's own length as the
    segment, the same centring (padding by half a window: zeros for librosa's constant mode,
    an even extension for torch's reflect mode) gives frames centred on the same samples, and
    the zeros that fill the n_fft frame change only the phase. The library scales by 1/sum(w)."""
    from jax.scipy.signal import stft

    from asc_jax.audio import passt_frontend as PF
    from asc_jax.audio.features import _padded_window, stft_power

    x = np.random.default_rng(3).normal(size=(2, 32_000)).astype(np.float32)
    if frontend == "student":
        cfg = MelConfig()
        win_length, hop, window, boundary, mode = (cfg.win_length, cfg.hop_length, _padded_window(cfg),
                                                   "zeros", "constant")
    else:
        cfg = PF.PaSSTFrontendConfig()
        win_length, hop, window, boundary, mode = (cfg.win_length, cfg.hop_length, PF._constants(cfg)[0],
                                                   "even", "reflect")
    left = (window.shape[-1] - win_length) // 2  # librosa's pad_center and torch.stft centre it
    short = window[left:left + win_length]  # the window without its n_fft padding
    ours = np.asarray(stft_power(jnp.asarray(x), window, hop, pad_mode=mode))
    _, _, z = stft(jnp.asarray(x), nperseg=win_length, noverlap=win_length - hop, nfft=window.shape[-1],
                   window=jnp.asarray(short), boundary=boundary, padded=False)
    lib = np.swapaxes(np.abs(np.asarray(z) * short.sum()) ** 2, -1, -2)
    assert ours.shape == lib.shape == (2, 1 + 32_000 // hop, window.shape[-1] // 2 + 1)
    np.testing.assert_allclose(ours, lib, rtol=0, atol=1e-6 * lib.max())
