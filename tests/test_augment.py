"""Augmentations: roll, frequency mask, Freq-MixStyle, composition and parameter replay."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asc_jax.audio import augment as aug


def _mel(b=8, f=32, t=20, seed=0):
    return np.random.default_rng(seed).normal(-3.0, 2.0, (b, f, t)).astype(np.float32)


# ---------------------------------------------------------------------------------------- roll
def test_roll_is_bounded_energy_preserving_permutation():
    cfg = aug.RollConfig()
    assert cfg.max_shift(32000) == 4000
    wave = np.random.default_rng(0).normal(size=(64, 32000)).astype(np.float32)
    params = cfg.sample(jax.random.key(1), 64, 32000)
    shift = np.asarray(params["shift"])
    assert np.abs(shift).max() <= 4000 and len(set(shift.tolist())) > 50
    out = np.asarray(cfg.apply(jnp.asarray(wave), params))
    for b in range(64):
        np.testing.assert_array_equal(out[b], np.roll(wave[b], shift[b]))
        np.testing.assert_array_equal(np.sort(out[b]), np.sort(wave[b]))
    np.testing.assert_allclose((out**2).sum(-1), (wave**2).sum(-1), rtol=1e-6)
    # Many draws: both bounds are reachable and never exceeded.
    many = np.asarray(cfg.sample(jax.random.key(2), 200_000, 32000)["shift"])
    assert many.min() == -4000 and many.max() == 4000


def test_roll_host_numpy_and_device_jax_agree_bitwise():
    wave = np.random.default_rng(3).normal(size=(4, 1000)).astype(np.float32)
    shift = np.array([0, 1, -250, 999])
    host = aug.roll_waveform(wave, shift)
    assert isinstance(host, np.ndarray)
    device = np.asarray(aug.roll_waveform(jnp.asarray(wave), jnp.asarray(shift)))
    np.testing.assert_array_equal(host, device)
    # Single clip on the host, as the grain pipeline does it.
    np.testing.assert_array_equal(aug.roll_waveform(wave[2], np.int64(-250)), host[2])


# --------------------------------------------------------------------------------- freq mask
def test_freq_mask_zeroes_exactly_the_band():
    cfg = aug.FreqMaskConfig(mask_param=48, n_mels=256)
    mel = _mel(b=32, f=256, t=5) + 50.0  # no natural zeros
    params = cfg.sample(jax.random.key(0), 32)
    start, width = np.asarray(params["start"]), np.asarray(params["width"])
    assert (width >= 0).all() and (width <= 47).all() and (start >= 0).all()
    assert (start + width <= 256).all()
    out = np.asarray(cfg.apply(jnp.asarray(mel), params))
    expected = mel.copy()
    for b in range(32):
        expected[b, start[b]:start[b] + width[b]] = 0.0
    np.testing.assert_array_equal(out, expected)
    assert (width > 0).sum() > 20  # the test really masks something


def test_freq_mask_sampling_distribution_like_torchaudio():
    cfg = aug.FreqMaskConfig(mask_param=48, n_mels=256)
    params = cfg.sample(jax.random.key(5), 100_000)
    width = np.asarray(params["width"])
    counts = np.bincount(width, minlength=48)
    assert counts.shape == (48,)  # floor(U[0, 48)): 0..47
    np.testing.assert_allclose(counts / counts.sum(), 1 / 48, atol=0.003)


def test_freq_mask_conversion_128_to_256_doubles_band():
    cfg128 = aug.FreqMaskConfig(mask_param=48, n_mels=128)
    params = cfg128.sample(jax.random.key(7), 64)
    start, width = np.asarray(params["start"]), np.asarray(params["width"])
    lo, hi = aug.freq_mask_edges(params, 256)
    np.testing.assert_array_equal(lo, 2 * start)
    np.testing.assert_array_equal(hi, 2 * (start + width))
    mel256 = _mel(b=64, f=256, t=3) + 50.0
    out = np.asarray(cfg128.apply(jnp.asarray(mel256), params))
    for b in range(64):
        zero_rows = np.flatnonzero((out[b] == 0).all(-1))
        np.testing.assert_array_equal(zero_rows, np.arange(2 * start[b], 2 * (start[b] + width[b])))


@pytest.mark.parametrize("src,dst", [(128, 256), (256, 128), (100, 256), (256, 256)])
def test_freq_mask_bins_follow_fractional_edge_rule(src, dst):
    params = aug.FreqMaskConfig(48, src).sample(jax.random.key(src + dst), 200)
    lo, hi = aug.freq_mask_edges(params, dst)
    centres = np.arange(dst) + 0.5
    expected = (centres[None] >= lo[:, None]) & (centres[None] < hi[:, None])
    np.testing.assert_array_equal(np.asarray(aug.freq_mask_bins(params, dst)), expected)


# --------------------------------------------------------------------------------- mixstyle
def _mixstyle_reference(x, lmda, perm, eps):
    """Direct NumPy (float64) transcription of CPJKU `mixstyle` (x as (B, 1, F, T))."""
    x = x[:, None].astype(np.float64)
    f_mu = x.mean(axis=(1, 3), keepdims=True)
    f_var = x.var(axis=(1, 3), keepdims=True, ddof=1)  # torch.var is unbiased by default
    f_sig = np.sqrt(f_var + eps)
    x_normed = (x - f_mu) / f_sig
    lmda = lmda.reshape(-1, 1, 1, 1).astype(np.float64)
    mu_mix = f_mu * lmda + f_mu[perm] * (1 - lmda)
    sig_mix = f_sig * lmda + f_sig[perm] * (1 - lmda)
    return (x_normed * sig_mix + mu_mix)[:, 0]


def test_mixstyle_matches_numpy_reference():
    cfg = aug.MixStyleConfig(alpha=0.3, p=1.0)
    mel = _mel(b=8, f=16, t=40)
    params = cfg.sample(jax.random.key(0), 8)
    assert np.asarray(params["apply"]).all()
    perm = np.asarray(params["perm"])
    assert sorted(perm.tolist()) == list(range(8)) and (perm != np.arange(8)).any()
    out = np.asarray(cfg.apply(jnp.asarray(mel), params))
    ref = _mixstyle_reference(mel, np.asarray(params["lmda"]), perm, cfg.eps)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert np.abs(out - mel).max() > 0.1  # it really changed the input


def test_mixstyle_flag_off_is_identity_and_flags_are_per_example():
    cfg = aug.MixStyleConfig()
    mel = _mel()
    params = cfg.sample(jax.random.key(1), 8)
    flags = np.array([True, False, True, False, False, True, True, False])
    params = {**params, "apply": jnp.asarray(flags)}
    out = np.asarray(cfg.apply(jnp.asarray(mel), params))
    np.testing.assert_array_equal(out[~flags], mel[~flags])
    ref = _mixstyle_reference(mel, np.asarray(params["lmda"]), np.asarray(params["perm"]), cfg.eps)
    np.testing.assert_allclose(out[flags], ref[flags], atol=1e-5, rtol=1e-5)
    off = {**params, "apply": jnp.zeros(8, bool)}
    np.testing.assert_array_equal(np.asarray(cfg.apply(jnp.asarray(mel), off)), mel)


def test_mixstyle_coin_is_batchwise_by_default_and_rate_is_p():
    # Batch size 8 throughout this file: jax.random.beta compiles slowly for each new shape.
    flags = {}
    for per_example in (False, True):
        cfg = aug.MixStyleConfig(p=0.7, per_example=per_example)
        flags[per_example] = np.asarray(
            [cfg.sample(jax.random.key(i), 8)["apply"] for i in range(300)])
    batch = flags[False]
    assert (batch.all(1) | ~batch.any(1)).all()  # one coin per batch, as in the reference
    assert abs(batch[:, 0].mean() - 0.7) < 0.09
    per_ex = flags[True]
    assert not (per_ex.all(1) | ~per_ex.any(1)).all()
    assert abs(per_ex.mean() - 0.7) < 0.04


def test_mixstyle_statistics_are_stop_gradient():
    cfg = aug.MixStyleConfig(p=1.0)
    mel = jnp.asarray(_mel(f=8, t=12))
    params = cfg.sample(jax.random.key(2), 8)
    grad = jax.grad(lambda x: cfg.apply(x, params).sum())(mel)
    # With detached statistics, d out / d x = sig_mix / sig elementwise (constant over time).
    sig = np.sqrt(np.var(np.asarray(mel), axis=-1, ddof=1, keepdims=True) + cfg.eps)
    lmda = np.asarray(params["lmda"])[:, None, None]
    sig_mix = sig * lmda + sig[np.asarray(params["perm"])] * (1 - lmda)
    np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(sig_mix / sig, mel.shape),
                               rtol=1e-5)


# ------------------------------------------------------------------------ composition / replay
def test_augment_batch_replay_is_bit_exact_under_jit():
    cfg = aug.AugmentConfig(freq_mask=aug.FreqMaskConfig(mask_param=8, n_mels=32))
    wave = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8000)).astype(np.float32))
    mel = jnp.asarray(_mel())
    step = jax.jit(aug.augment_batch, static_argnames=("cfg", "sr"))
    wave_aug, wave_params = step(jax.random.key(0), wave, cfg=cfg, sr=8000)
    assert np.abs(np.asarray(wave_params["roll"]["shift"])).max() <= 1000  # 0.125 s at 8 kHz
    with pytest.raises(ValueError, match="sample rate"):  # a roll's bound needs the rate
        aug.augment_batch(jax.random.key(0), wave, cfg)
    mel_aug, mel_params = step(jax.random.key(0), mel, cfg=cfg)
    assert set(wave_params) == {"roll"} and set(mel_params) == {"freq_mask", "mixstyle"}
    replay = jax.jit(aug.apply_augment, static_argnames="cfg")
    np.testing.assert_array_equal(np.asarray(replay(wave, wave_params, cfg=cfg)), np.asarray(wave_aug))
    np.testing.assert_array_equal(np.asarray(replay(mel, mel_params, cfg=cfg)), np.asarray(mel_aug))
    # Given params are used, missing ones sampled: a different key changes only mixstyle.
    _, used2 = aug.augment_batch(jax.random.key(9), mel, cfg, params={"freq_mask": mel_params["freq_mask"]})
    assert used2["freq_mask"] is mel_params["freq_mask"]
    assert not np.array_equal(np.asarray(used2["mixstyle"]["lmda"]), np.asarray(mel_params["mixstyle"]["lmda"]))


def test_apply_augment_requires_all_params_and_disabled_ops_do_nothing():
    mel = jnp.asarray(_mel())
    cfg = aug.AugmentConfig(roll=None, freq_mask=aug.FreqMaskConfig(8, 32), mixstyle=None)
    with pytest.raises(KeyError, match="freq_mask"):
        aug.apply_augment(mel, {}, cfg)
    none = aug.AugmentConfig(roll=None, freq_mask=None, mixstyle=None)
    out, used = aug.augment_batch(jax.random.key(0), mel, none)
    assert used == {} and np.array_equal(np.asarray(out), np.asarray(mel))
    with pytest.raises(ValueError, match="shape"):
        aug.augment_batch(jax.random.key(0), mel[0, 0], cfg)


def test_example_sampler_is_per_clip_and_rejects_batch_coupled_ops():
    with pytest.raises(ValueError, match="mixstyle"):
        aug.example_sampler(aug.AugmentConfig(), 32000)
    cfg = aug.AugmentConfig(freq_mask=aug.FreqMaskConfig(48, 128), mixstyle=None)
    sampler = aug.example_sampler(cfg, 32000)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(10))
    full = sampler(keys)
    assert set(full) == {"roll", "freq_mask"} and full["roll"]["shift"].shape == (10,)
    # An example's parameters depend on its key only, not on its batch neighbours.
    order = np.random.default_rng(0).permutation(10)
    shuffled = sampler(keys[order])
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(shuffled)):
        np.testing.assert_array_equal(np.asarray(a)[order], np.asarray(b))
    assert len(np.unique(np.asarray(full["roll"]["shift"]))) == 10


def test_config_dict_round_trip():
    cfg = aug.AugmentConfig(roll=None, freq_mask=aug.FreqMaskConfig(24, 128), mixstyle=aug.MixStyleConfig(p=0.4))
    assert aug.config_from_dict(aug.config_to_dict(cfg)) == cfg
    assert list(aug.augmentation_types()) == [f.name for f in dataclasses.fields(aug.AugmentConfig)]
    with pytest.raises(ValueError, match="unknown"):
        aug.config_from_dict({"reverb": {}})


def test_time_mask_draw_and_replay_on_another_frame_rate():
    cfg = aug.TimeMaskConfig(mask_param=20, n_frames=100)
    params = cfg.sample(jax.random.key(4), 50_000)
    start, width = np.asarray(params["start"]), np.asarray(params["width"])
    # torchaudio's draw: width in 0 .. mask_param - 1, the span inside the clip.
    assert width.min() == 0 and width.max() == 19 and (start + width).max() <= 100 and start.min() == 0
    mel = _mel(b=6, f=8, t=100)
    few = jax.tree.map(lambda a: a[:6], params)
    out = np.asarray(cfg.apply(jnp.asarray(mel), few))
    for b in range(6):
        hit = np.zeros(100, bool)
        hit[start[b]:start[b] + width[b]] = True
        np.testing.assert_array_equal(out[b][:, hit], 0.0)
        np.testing.assert_array_equal(out[b][:, ~hit], mel[b][:, ~hit])
    # The same spans on a 50-frame grid: frame j is masked iff its centre (j + 0.5) * 2 lies
    # in [start, start + width) of the 100-frame grid (the frequency mask's conversion rule).
    half = np.asarray(cfg.apply(jnp.asarray(_mel(b=6, f=8, t=50)), few))
    for b in range(6):
        centre = (np.arange(50) + 0.5) * 2
        hit = (centre >= start[b]) & (centre < start[b] + width[b])
        assert np.all(half[b][:, hit] == 0.0) and np.all(half[b][:, ~hit] != 0.0)
