"""PaSST and its frontend against the PyTorch originals (hear21passt 0.0.26), plus patchout.

The PyTorch comparisons need torch and hear21passt (installed with --no-deps: its timm and
torchaudio requirements cannot be met beside the offline CPU torch 2.13) and skip without them.
hear21passt imports timm only for a download helper and torchaudio only for
`compliance.kaldi.get_mel_banks`; both are stubbed while hear21passt is imported, the latter with
a per-bin port of Kaldi's C++ `MelBanks` unless a working torchaudio is installed.
"""
import importlib
import importlib.util
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import convert_weights
from asc_jax.audio.passt_frontend import PaSSTFrontendConfig, kaldi_mel_banks, passt_logmel
from asc_jax.checkpoint import load_model
from asc_jax.convert import KEY_MAPS, convert_state_dict
from asc_jax.models.passt import passt
from asc_jax.models.registry import MODELS

TINY = dict(depth=1, embed_dim=32, num_heads=4, n_classes=3, n_frames=200)


@nnx.jit(static_argnames="train")
def _forward(model, x, train=False):
    # One compile per shape instead of one per op: eager dispatch dominates these tiny tests.
    return model(x, train=train)


def _kaldi_mel_banks_loop(n_mels, n_fft, sample_rate, fmin, fmax):
    """Kaldi `MelBanks` (mel-computations.cc) bin by bin: (n_mels, n_fft // 2), float64."""
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(fmin), mel(fmax)
    delta = (high - low) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2))
    for b in range(n_mels):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        for i in range(n_fft // 2):
            m = mel(sample_rate / n_fft * i)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return banks


@pytest.fixture(scope="module")
def hear21passt():
    """(torch, hear21passt.models.passt, hear21passt.models.preprocess), stubs removed afterwards."""
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("hear21passt") is None:
        pytest.skip("hear21passt not installed (pip install --no-deps hear21passt==0.0.26)")
    stubs = {}
    try:
        importlib.import_module("timm.models._hub")
    except Exception:  # noqa: BLE001  (absent, or present without torchvision)
        hub = types.ModuleType("timm.models._hub")
        hub.download_cached_file = None  # only used to download pretrained weights
        stubs.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                      "timm.models._hub": hub})
    try:
        importlib.import_module("torchaudio.compliance.kaldi")
    except Exception:  # noqa: BLE001  (absent, or its C++ extension does not match torch 2.13)
        def get_mel_banks(num_bins, window_length_padded, sample_freq, low_freq, high_freq,
                          vtln_low, vtln_high, vtln_warp_factor):
            assert vtln_warp_factor == 1.0, "AugmentMelSTFT never warps"
            banks = _kaldi_mel_banks_loop(num_bins, window_length_padded, sample_freq, low_freq, high_freq)
            return torch.tensor(banks, dtype=torch.get_default_dtype()), None

        kaldi = types.ModuleType("torchaudio.compliance.kaldi")
        kaldi.get_mel_banks = get_mel_banks
        compliance = types.ModuleType("torchaudio.compliance")
        compliance.kaldi = kaldi
        torchaudio = types.ModuleType("torchaudio")
        torchaudio.compliance = compliance
        stubs.update({"torchaudio": torchaudio, "torchaudio.compliance": compliance,
                      "torchaudio.compliance.kaldi": kaldi})
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        ref_passt = importlib.import_module("hear21passt.models.passt")
        ref_preprocess = importlib.import_module("hear21passt.models.preprocess")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return torch, ref_passt, ref_preprocess


# (stride, n_frames the model is sized for, input frames, embed_dim, heads, depth)
CASES = {
    "s10_cropped_time": ((10, 10), 998, 500, 32, 4, 2),
    "s16_full_length": ((16, 16), 998, 998, 32, 4, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_passt_matches_pytorch(hear21passt, case):
    torch, ref_passt, _ = hear21passt
    stride, n_frames, t_in, embed, heads, depth = CASES[case]
    torch.manual_seed(0)
    ref = ref_passt.PaSST(img_size=(128, n_frames), patch_size=16, stride=stride, in_chans=1,
                          num_classes=10, embed_dim=embed, depth=depth, num_heads=heads,
                          distilled=True).eval()
    with torch.no_grad():  # Perturb every weight so that identity LayerNorms / zero biases hide nothing.
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state_dict = {k: v.numpy() for k, v in ref.state_dict().items()}
    model = passt(rngs=nnx.Rngs(1), n_classes=10, n_frames=n_frames, fstride=stride[0],
                  tstride=stride[1], embed_dim=embed, num_heads=heads, depth=depth)
    convert_state_dict(model, state_dict, KEY_MAPS.get("passt"))

    x = np.random.default_rng(0).normal(size=(2, 128, t_in)).astype(np.float32)
    with torch.no_grad():
        ref_logits, ref_features = (t.numpy() for t in ref(torch.from_numpy(x)[:, None]))
    logits, aux = _forward(model, jnp.asarray(x))
    scale = np.abs(ref_logits).max()
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(aux["pre_logits"], ref_features, rtol=1e-4,
                               atol=1e-4 * np.abs(ref_features).max())


def test_cli_converts_torch_checkpoint_end_to_end(hear21passt, tmp_path):
    torch, ref_passt, _ = hear21passt
    torch.manual_seed(1)
    ref = ref_passt.PaSST(img_size=(128, 998), patch_size=16, stride=10, in_chans=1, num_classes=10,
                          embed_dim=32, depth=1, num_heads=4, distilled=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # A Lightning-style checkpoint whose network sits under "net.".
    torch.save({"state_dict": {f"net.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "t.ckpt")
    convert_weights.main(["--arch", "passt", "--torch-ckpt", str(tmp_path / "t.ckpt"), "--prefix", "net.",
                          "--out", str(tmp_path / "out"), "--num-classes", "10",
                          "--model-kwargs", json.dumps(dict(embed_dim=32, depth=1, num_heads=4))])
    model = load_model(tmp_path / "out")[0]
    x = np.random.default_rng(2).normal(size=(1, 128, 100)).astype(np.float32)  # a 1 s clip
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)[:, None])[0].numpy()
    np.testing.assert_allclose(_forward(model, jnp.asarray(x))[0], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_frontend_matches_augmentmelstft(hear21passt):
    torch, _, ref_preprocess = hear21passt
    # hear21passt's PaSST-S frontend, masking off (eval mode skips it anyway).
    ref = ref_preprocess.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                                        freqm=0, timem=0, htk=False, fmin=0.0, fmax=None, norm=1,
                                        fmin_aug_range=10, fmax_aug_range=2000).eval()
    rng = np.random.default_rng(0)
    t = np.arange(32000 * 2) / 32000
    wave = np.stack([0.1 * rng.standard_normal(t.size),
                     0.5 * np.sin(2 * np.pi * (100 + 3000 * t) * t)]).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(wave)).numpy()
    got = np.asarray(passt_logmel(jnp.asarray(wave)))
    assert got.shape == expected.shape == (2, 128, PaSSTFrontendConfig().n_frames(wave.shape[1]))
    # Both run float32 FFTs that round differently. Noise agrees to 4e-5; for the chirp, bins 1e-9
    # below the frame's peak power carry relative rounding errors of ~1e-3 (2.6e-4 after log/5).
    diff = np.abs(got - expected)
    assert diff.max() < 5e-4, diff.max()
    assert diff.mean() < 1e-5, diff.mean()
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4, rtol=0)


def test_kaldi_mel_banks_match_per_bin_reference():
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert banks.shape == (128, 513)
    np.testing.assert_array_equal(banks[:, -1], 0.0)  # AugmentMelSTFT pads the Nyquist column.
    np.testing.assert_allclose(banks[:, :-1], _kaldi_mel_banks_loop(128, 1024, 32000, 0.0, 15000.0),
                               atol=1e-6)
    assert PaSSTFrontendConfig().resolved_fmax == 15000.0


def test_frontend_frame_count_and_errors():
    cfg = PaSSTFrontendConfig()
    assert passt_logmel(jnp.zeros(32000 * 10)).shape == (128, 1000)
    assert cfg.n_frames(32000 * 10) == 1000
    with pytest.raises(ValueError, match="too short"):
        passt_logmel(jnp.zeros((1, 400)))
    with pytest.raises(ValueError, match="fmin"):
        kaldi_mel_banks(128, 1024, 32000, 9000.0, 8000.0)


def test_registered_and_variant_defaults():
    assert "passt" in MODELS
    model = nnx.eval_shape(lambda: MODELS.get("passt")(rngs=nnx.Rngs(0)))
    n_params = sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # hear21passt's PaSST-S has 86,153,758 parameters, 405,263 of them in the unused head_dist.
    assert n_params == 85_748_495
    assert model.freq_new_pos_embed.shape == (1, 12, 1, 768)
    assert model.time_new_pos_embed.shape == (1, 1, 99, 768)
    with pytest.raises(KeyError, match="unknown PaSST variant"):
        passt(rngs=nnx.Rngs(0), variant="nope")


def test_patchout_changes_token_count_in_train_mode_only():
    model = passt(rngs=nnx.Rngs(0, patchout=1), s_patchout_t=3, s_patchout_f=2, **TINY)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 128, 150)), jnp.float32)
    f, t = 12, 14  # (128 - 16) // 10 + 1, (150 - 16) // 10 + 1
    logits, aux = _forward(model, x)
    assert aux["tokens"].shape == (2, 2 + f * t, 32)
    logits_again, _ = _forward(model, x)
    np.testing.assert_array_equal(logits, logits_again)  # eval mode draws nothing

    train1, aux1 = _forward(model, x, train=True)
    train2, _ = _forward(model, x, train=True)
    assert aux1["tokens"].shape == (2, 2 + (f - 2) * (t - 3), 32)
    assert not np.allclose(train1, train2)  # the stream advances: different stripes dropped

    unstructured = passt(rngs=nnx.Rngs(0), u_patchout=40, **TINY)
    assert _forward(unstructured, x, train=True)[1]["tokens"].shape == (2, 2 + f * t - 40, 32)
    assert _forward(unstructured, x)[1]["tokens"].shape == (2, 2 + f * t, 32)


def test_no_patchout_train_equals_eval():
    model = passt(rngs=nnx.Rngs(0), **TINY)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 128, 200)), jnp.float32)
    np.testing.assert_array_equal(_forward(model, x)[0], _forward(model, x, train=True)[0])


def test_input_shape_errors():
    model = passt(rngs=nnx.Rngs(0), **TINY)
    with pytest.raises(ValueError, match="positional"):
        model(jnp.zeros((1, 128, 300)))  # longer than the time embedding covers
    with pytest.raises(ValueError, match="expects"):
        model(jnp.zeros((1, 64, 100)))


@pytest.mark.slow
def test_converted_passt_finetunes_in_jax_and_teaches(hear21passt, tmp_path):
    """hear21passt weights -> convert_weights.py -> a few fine-tuning steps by train.py on PaSST's
    frontend (model.init_from, strict) -> the workdir as a teacher: its stored logits are the
    fine-tuned model's predictions, and fine-tuning moved the converted weights."""
    import dataclasses

    from asc_jax import distill, inference
    from asc_jax.audio.augment import AugmentConfig
    from asc_jax.checkpoint import named_leaves
    from asc_jax.config import Config, DataConfig, ModelConfig, OptimConfig
    from asc_jax.data import sources, synthetic
    from asc_jax.train import train_and_evaluate

    torch, ref_passt, _ = hear21passt
    torch.manual_seed(3)
    arch = dict(embed_dim=32, depth=1, num_heads=4)
    ref = ref_passt.PaSST(img_size=(128, 998), patch_size=16, stride=10, in_chans=1, num_classes=527,
                          distilled=True, **arch).eval()
    torch.save(ref.state_dict(), tmp_path / "audioset.pt")
    convert_weights.main(["--arch", "passt", "--torch-ckpt", str(tmp_path / "audioset.pt"),
                          "--out", str(tmp_path / "converted"), "--num-classes", "10",
                          "--model-kwargs", json.dumps(arch)])
    data = tmp_path / "tau"
    synthetic.ensure_dataset(data, n_train_per_class_device=2, n_test_per_class_device=1,
                             clips_per_recording=1, train_locations_per_class=2, test_locations_per_class=1)
    config = Config(frontend="passt", data=DataConfig(root=str(data), generate=False),
                    model=ModelConfig(name="passt", options={"n_classes": 10, "s_patchout_f": 6, **arch},
                                      init_from=str(tmp_path / "converted")),
                    optim=OptimConfig(lr=1e-3, epochs=1, warmup_epochs=0, batch_size=32),
                    eval_every_epochs=1, log_every_steps=1)
    summary = train_and_evaluate(config, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 120 // 32

    saved = inference.load(tmp_path / "run" / "model")  # the only saved form (PaSST has no fused one)
    converted = load_model(tmp_path / "converted")[0]
    moved = [k for (k, a), (_, b) in zip(named_leaves(nnx.state(converted, nnx.Param)),
                                         named_leaves(nnx.state(saved.model, nnx.Param))) if not np.array_equal(a, b)]
    assert len(moved) > 10
    student = dataclasses.replace(config, frontend="logmel", model=ModelConfig(),
                                  augment=AugmentConfig(roll=None, freq_mask=None, mixstyle=None))
    store = distill.precompute(tmp_path / "store", config=student, teachers=[tmp_path / "run"], n_views=1,
                               batch_size=16, progress=False)
    train = sources.load_split_source(data, "100", sr=32000).source
    expected = inference.predict(saved.fn, train, 32)
    np.testing.assert_allclose(store.logits[store.rows([c.filename for c in train.clips]), 0, 0], expected,
                               rtol=1e-5, atol=1e-6)
