"""The PyTorch-side frontends (CPJKU DCASE2023 students', DCASE2024 baseline's), the mel-range
jitter and torchaudio's resampler, each against a torch computation.

torchaudio cannot be imported here (its wheels do not match the CPU torch 2.13), so its few ops
are transcribed with torch from torchaudio 2.11's source (`functional.melscale_fbanks`,
`_get_sinc_resample_kernel`, `_apply_sinc_resample_kernel`, `transforms.Spectrogram`); the
CPJKU frontend is hear21passt's own `AugmentMelSTFT` (the class cpjku_dcase23 copies).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asc_jax.audio import frontends, resample
from asc_jax.audio.features import MelConfig
from asc_jax.audio.passt_frontend import (CPJKU_STUDENT, PaSSTFrontendConfig, jitter_edges,
                                          kaldi_mel_banks, mel_from_banks, passt_logmel_train,
                                          traced_mel_banks)
from asc_jax.config import Config
from tests.test_passt import _kaldi_mel_banks_loop, hear21passt  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")


def _waves(n_samples=32000):
    """Noise and a chirp up to 14 kHz, so every mel band and the reflect-padded edges matter."""
    rng = np.random.default_rng(0)
    t = np.arange(n_samples) / 32000
    return np.stack([0.1 * rng.standard_normal(n_samples),
                     0.5 * np.sin(2 * np.pi * (100 + 7000 * t) * t)]).astype(np.float32)


def _compare(got, expected, what, per_log_unit=1.0):
    """Features against a float64 torch computation, on the first, interior and last frames
    (reflect padding) alike: within 1e-4 (in natural-log-mel units, `per_log_unit` feature
    units each) wherever a band lies within 60 dB (log 1e6) of its frame's loudest band. Bands
    further down carry float32 FFT rounding (~1e-3 relative at 1e-9 of a frame's peak power,
    as much in torch's float32 as here): they only have to be within 3e-3."""
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    loud = expected > expected.max(axis=-2, keepdims=True) - np.log(1e6) * per_log_unit
    for name, frames in (("first", slice(0, 4)), ("interior", slice(4, -4)), ("last", slice(-4, None))):
        diff = np.abs(got[..., frames] - expected[..., frames]) / per_log_unit
        assert diff[loud[..., frames]].max() < 1e-4, (what, name, diff[loud[..., frames]].max())
        assert diff.max() < 3e-3, (what, name, diff.max())
    assert np.abs(got[0] - expected[0]).max() < 1e-4 * per_log_unit  # the noise clip: everywhere


@pytest.fixture
def float64_torch():
    """Reference computations in float64 (torch's default dtype for the test, restored after)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# --- torchaudio transcriptions ------------------------------------------------------------------
def _ta_melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate, dtype=torch.float32):
    """torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"), float32 like the original."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    hz_to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=dtype)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1, dtype=dtype), torch.min(down, up))


def _ta_mel_spectrogram(wave, sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256):
    """torchaudio.transforms.MelSpectrogram(...) with its defaults (periodic Hann, center, reflect,
    power 2, HTK, norm None), then the DCASE2024 baseline's log(x + 1e-5)."""
    spec = torch.stft(wave, n_fft, hop_length, win_length, torch.hann_window(win_length, dtype=wave.dtype),
                      center=True, pad_mode="reflect", normalized=False, onesided=True,
                      return_complex=True).abs() ** 2
    fb = _ta_melscale_fbanks(n_fft // 2 + 1, 0.0, float(sample_rate // 2), n_mels, sample_rate, wave.dtype)
    mel = torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)
    return (mel + 1e-5).log()


def _ta_resample(wave, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99):
    """torchaudio.transforms.Resample(orig, new) (sinc_interp_hann) on a 1-D waveform."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel = (kernel * window * (base / orig)).to(torch.float32)
    x = torch.nn.functional.pad(torch.as_tensor(wave)[None], (width, width + orig))
    out = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig).transpose(1, 2).reshape(1, -1)
    return out[0, :math.ceil(new * len(wave) / orig)].numpy()


# --- frontends ----------------------------------------------------------------------------------
def test_dcase2024_frontend_matches_torchaudio_melspectrogram(float64_torch):
    frontend = frontends.FRONTENDS.get("dcase2024")({})
    assert (frontend.n_mels, frontend.sample_rate, frontend.resampler) == (256, 32000, "torchaudio")
    wave = _waves()
    with torch.no_grad():
        expected = _ta_mel_spectrogram(torch.from_numpy(wave).double()).numpy()
    got = np.asarray(jax.jit(frontend.features)(jnp.asarray(wave)))
    assert got.shape == (2, 256, 65)  # hop 500: 65 frames per 1-s clip
    _compare(got, expected, "dcase2024")


def test_htk_filterbank_equals_torchaudio():
    from asc_jax.audio.features import mel_filterbank
    fb = mel_filterbank(frontends.DCASE2024_BASELINE)  # librosa's, float64 cast to float32
    exact = _ta_melscale_fbanks(2049, 0.0, 16000.0, 256, 32000, torch.float64).numpy()
    np.testing.assert_allclose(fb, exact, atol=1e-6)
    # torchaudio computes its filterbank in float32, which rounds by up to 1.6e-5 of a weight.
    np.testing.assert_allclose(fb, _ta_melscale_fbanks(2049, 0.0, 16000.0, 256, 32000).numpy(), atol=3e-5)


def test_cpjku_frontend_matches_augmentmelstft(hear21passt, float64_torch):  # noqa: F811
    torch_, _, ref_preprocess = hear21passt
    # cpjku_dcase23's student mel (models/mel.py = hear21passt's class), eval mode.
    ref = ref_preprocess.AugmentMelSTFT(n_mels=256, sr=32000, win_length=3072, hopsize=500, n_fft=4096,
                                        freqm=0, timem=0, fmin=0.0, fmax=None, fmin_aug_range=1,
                                        fmax_aug_range=1000).eval().double()
    wave = _waves()
    with torch_.no_grad():
        expected = ref(torch_.from_numpy(wave).double()).numpy()
    frontend = frontends.FRONTENDS.get("cpjku")({})
    got = np.asarray(jax.jit(frontend.features)(jnp.asarray(wave)))
    assert got.shape == (2, 256, 64)  # 64 frames per 1-s clip, fmax 15.5 kHz
    assert CPJKU_STUDENT.resolved_fmax == 15500.0
    _compare(got, expected, "cpjku", per_log_unit=1 / 5)  # features are (log + 4.5) / 5


def test_mel_jitter_matches_augmentmelstft_in_training(hear21passt, float64_torch):  # noqa: F811
    """Training mode with the jitter on: the reference draws (fmin, fmax) with torch.randint; the
    same edges through `mel_from_banks` give its output, and `jitter_edges` draws from the same
    ranges (both ends reached)."""
    torch_, _, ref_preprocess = hear21passt
    cfg = PaSSTFrontendConfig(mel_jitter=True)  # PaSST's ranges: fmin_aug_range 10, fmax 2000
    ref = ref_preprocess.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                                        freqm=0, timem=0, fmin=0.0, fmax=None, fmin_aug_range=10,
                                        fmax_aug_range=2000).train().double()
    wave = _waves(16000)
    for seed in range(3):
        torch_.manual_seed(seed)
        with torch_.no_grad():
            expected = ref(torch_.from_numpy(wave).double()).numpy()
        torch_.manual_seed(seed)
        fmin = 0.0 + torch_.randint(10, (1,)).item()
        fmax = cfg.resolved_fmax + 1000 - torch_.randint(2000, (1,)).item()
        got = np.asarray(mel_from_banks(jnp.asarray(wave), traced_mel_banks(
            jnp.float32(fmin), jnp.float32(fmax), cfg), cfg))
        _compare(got, expected, f"jitter seed {seed}", per_log_unit=1 / 5)
    fmins, fmaxs = map(np.asarray, jax.vmap(lambda k: jitter_edges(k, cfg))(
        jax.random.split(jax.random.key(0), 4000)))
    assert set(fmins.tolist()) == set(range(10))  # 0 + randint(10)
    assert 14001 <= fmaxs.min() < 14010 and 15990 < fmaxs.max() <= 16000  # 15000 + 1000 - randint(2000)


def test_traced_banks_equal_the_eval_banks():
    """float32 on device vs float64: mel differences of nearby bins cancel by ~3e-5 of a weight
    (torchaudio's get_mel_banks, float32 as well, rounds as much)."""
    cfg = CPJKU_STUDENT
    np.testing.assert_allclose(np.asarray(traced_mel_banks(jnp.float32(0.0), jnp.float32(15500.0), cfg)),
                               kaldi_mel_banks(256, 4096, 32000, 0.0, 15500.0), atol=5e-5)
    np.testing.assert_allclose(kaldi_mel_banks(256, 4096, 32000, 7.0, 15200.0)[:, :-1],
                               _kaldi_mel_banks_loop(256, 4096, 32000, 7.0, 15200.0), atol=1e-6)


def test_jitter_is_training_only_and_off_by_default():
    wave = jnp.asarray(_waves(16000))
    off = frontends.FRONTENDS.get("cpjku")({})
    assert off.train_features is None
    np.testing.assert_array_equal(off.training_features(wave, jax.random.key(0)), off.features(wave))
    on = frontends.FRONTENDS.get("cpjku")({"mel_jitter": True})
    a, b = (np.asarray(on.training_features(wave, jax.random.key(k))) for k in (0, 1))
    assert not np.allclose(a, b)  # another draw, other edges
    np.testing.assert_array_equal(on.features(wave), off.features(wave))  # eval: no jitter
    np.testing.assert_array_equal(passt_logmel_train(wave, jax.random.key(0), CPJKU_STUDENT),
                                  off.features(wave))


# --- configs and model.json ---------------------------------------------------------------------
def test_config_chooses_a_preset_and_section_changes_apply_on_top():
    f = frontends.of_config(Config(frontend="cpjku"))
    assert (f.name, f.n_mels, f.options["hop_length"], f.train_features) == ("cpjku", 256, 500, None)
    f = frontends.of_config(Config(frontend="cpjku", passt_frontend=PaSSTFrontendConfig(mel_jitter=True)))
    assert f.options["mel_jitter"] and f.options["hop_length"] == 500 and f.train_features is not None
    f = frontends.of_config(Config(frontend="dcase2024", mel=MelConfig(n_mels=128)))
    assert (f.n_mels, f.options["hop_length"], f.options["htk"], f.resampler) == (128, 500, True, "torchaudio")
    # The students' own frontend is unchanged: the section is the settings.
    assert frontends.of_config(Config()).options == frontends.logmel(MelConfig()).options
    # The recorded form rebuilds exactly.
    for name in frontends.PRESETS:
        f = frontends.FRONTENDS.get(name)({})
        again = frontends.frontend_of({"model": {"name": "x"}, "frontend": f.describe()}, "d")
        assert again.describe() == f.describe() and again.resampler == f.resampler


def test_bad_frontend_options_are_named():
    with pytest.raises(ValueError, match="pad_mode"):
        MelConfig(pad_mode="edge")
    with pytest.raises(ValueError, match="unknown resampler 'sinc'"):
        frontends.FRONTENDS.get("logmel")({"resampler": "sinc"})
    with pytest.raises(ValueError, match=r"d/model.json: bad options for frontend 'cpjku'"):
        frontends.frontend_of({"model": {"name": "x"}, "frontend": {"name": "cpjku", "options": {"hop": 1}}}, "d")


# --- resampling ---------------------------------------------------------------------------------
def test_torchaudio_resampler_matches_its_transcription():
    x = np.random.default_rng(1).standard_normal(48000).astype(np.float32)
    for orig, new in ((44100, 32000), (48000, 32000), (16000, 32000)):
        got = resample.resample(x[: orig], orig, new, "torchaudio")
        expected = _ta_resample(x[: orig], orig, new)
        assert got.shape == expected.shape == (new,)
        np.testing.assert_allclose(got, expected, atol=2e-6)


def test_resamplers_differ_as_documented_above_12_khz():
    """A 17 kHz tone, 44.1 -> 32 kHz: above the new Nyquist, so all that remains is aliasing."""
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 17000 * t)).astype(np.float32)
    rms = {m: float(np.sqrt(np.mean(resample.resample(tone, 44100, 32000, m)[2000:-2000] ** 2)))
           for m in resample.RESAMPLERS}
    assert rms["soxr"] < 1e-3 and 0.05 < rms["torchaudio"] < 0.2, rms
    with pytest.raises(ValueError, match="unknown resampler"):
        resample.resample(tone, 44100, 32000, "linear")


def test_load_audio_uses_the_frontends_resampler(tmp_path):
    import soundfile as sf
    from asc_jax.data import tau
    x = (0.1 * np.random.default_rng(2).standard_normal(44100)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    got = tau.load_audio(tmp_path / "a.wav", 32000, resampler="torchaudio")
    np.testing.assert_allclose(got, _ta_resample(x, 44100, 32000), atol=2e-6)
    assert not np.allclose(tau.load_audio(tmp_path / "a.wav", 32000), got, atol=1e-4)
