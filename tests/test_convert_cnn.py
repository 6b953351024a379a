"""CPJKU CNN checkpoints (CP-Mobile, DCASE2024 baseline, CP-ResNet) -> asc_jax, against PyTorch.

The PyTorch references below re-state the original modules, checked against their sources:
  * CP-Mobile: fschmid56/cpjku_dcase23 `models/cp_mobile_clean.py` (`Network`, `CPMobileBlock`,
    `GRN`), trained by its `run_training.py` as `self.model` beside `self.mel`, an AugmentMelSTFT
    whose buffers are not persistent: the Lightning checkpoint holds "model.*" keys only.
  * DCASE2024 baseline: CPJKU/dcase2024_task1_baseline `models/baseline.py` (`Network`, `Block`:
    CP-Mobile without GRN, other defaults); `run_training.py` holds it as `self.model` beside
    `self.mel = Sequential(Resample, MelSpectrogram)` (buffers "mel.0.kernel",
    "mel.1.spectrogram.window", "mel.1.mel_scale.fb") and saves `model.state_dict()` alone too.
  * CP-ResNet: CPJKU/cpjku_dcase22 `models/cp/cp_resnet.py` (`get_model`, `Network`,
    `BasicBlock`), trained by `experiments/dcase22/t1/teachers_gang.py` as ba3l's `self.net`
    beside a PaSST `teacher_net` (its mel modules' buffers are not persistent).
They reproduce the originals' state-dict keys (attribute names, Sequential order) and forward
passes; the kernel tables of CP-ResNet are re-stated from `get_model`, not taken from asc_jax.
torchvision's `Conv2dNormActivation` is rebuilt as the Sequential it is (0: conv, 1: BN, 2: ReLU),
since torchvision is not installed beside the offline torch. Every BatchNorm gets random running
statistics and affine parameters and every GRN non-zero gamma/beta, so that none of them can be
dropped or misplaced unnoticed.
"""
import argparse
import json
import logging

import jax
import numpy as np
import pytest
from flax import nnx

import convert_weights
from asc_jax import inference
from asc_jax.audio import frontends
from asc_jax.checkpoint import load_model, read_spec
from asc_jax.convert import KEY_MAPS, convert_state_dict, frontend_entry, infer_options, map_state_dict
from asc_jax.models.cp_resnet import kernel_sizes
from asc_jax.models.rep_mobile import cp_mobile

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = 1e-4


def make_divisible(v, divisor=8, min_value=None):
    """torchvision's `_make_divisible`, as the CPJKU code uses it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_norm_act(in_c, out_c, kernel_size, stride=1, padding=None, groups=1, act=True):
    """torchvision.ops.misc.Conv2dNormActivation with its defaults (BatchNorm2d, ReLU, and so no
    conv bias; padding (k - 1) // 2): the same modules in the same order, hence the same keys."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    layers = [nn.Conv2d(in_c, out_c, kernel_size, stride, padding, groups=groups, bias=False),
              nn.BatchNorm2d(out_c)]
    if act:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class GRN(nn.Module):
    """Global response normalisation with scalar gamma / beta (the quant stubs hold no state)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)  # per channel, over (freq, time)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)  # relative to the channel mean
        return self.gamma * (x * nx) + self.beta + x


class MobileBlock(nn.Module):
    """CP-Mobile's CPMobileBlock (with GRN) and the baseline's Block (without): the three convs
    live only in `block`; a shortcut exists only where widths match, average-pooled if strided."""

    def __init__(self, in_c, out_c, exp_c, stride, use_grn):
        super().__init__()
        self.block = nn.Sequential(
            conv_norm_act(in_c, exp_c, 1),
            conv_norm_act(exp_c, exp_c, 3, stride, padding=1, groups=exp_c),
            conv_norm_act(exp_c, out_c, 1, act=False))
        if use_grn:
            self.after_block_norm = GRN()
        self.after_block_activation = nn.ReLU()
        self.use_shortcut = in_c == out_c
        if self.use_shortcut:
            if tuple(stride) == (1, 1):
                self.shortcut = nn.Sequential()
            else:
                self.shortcut = nn.Sequential(nn.AvgPool2d(kernel_size=3, stride=stride, padding=1),
                                              nn.Sequential())

    def forward(self, x):
        y = self.block(x) + self.shortcut(x) if self.use_shortcut else self.block(x)
        if hasattr(self, "after_block_norm"):
            y = self.after_block_norm(y)
        return self.after_block_activation(y)


class MobileNetwork(nn.Module):
    """CP-Mobile's / the baseline's Network; `stage_channels` / `exp_channels` replace the derived
    widths (a pruned network), as no original option does."""

    def __init__(self, n_classes=10, in_channels=1, base_channels=32, channels_multiplier=2.3,
                 expansion_rate=3.0, n_blocks=(3, 2, 1), strides=None, use_grn=True,
                 stage_channels=None, exp_channels=None):
        super().__init__()
        strides = strides if strides is not None else dict(b2=(2, 2), b4=(2, 1))
        base_channels = make_divisible(base_channels, 8)
        channels = stage_channels or [base_channels] + [
            make_divisible(base_channels * channels_multiplier ** s, 8) for s in range(len(n_blocks))]
        self.in_c = nn.Sequential(conv_norm_act(in_channels, channels[0] // 4, 3, 2),
                                  conv_norm_act(channels[0] // 4, channels[0], 3, 2))
        self.stages = nn.Sequential()
        block_id = 0
        for s, n in enumerate(n_blocks):
            stage = nn.Sequential()
            in_c = channels[s]
            for _ in range(n):
                name = f"b{block_id + 1}"
                exp_c = exp_channels[block_id] if exp_channels else make_divisible(in_c * expansion_rate, 8)
                stage.add_module(name, MobileBlock(in_c, channels[s + 1], exp_c,
                                                   strides.get(name, (1, 1)), use_grn))
                in_c = channels[s + 1]
                block_id += 1
            self.stages.add_module(f"s{s + 1}", stage)
        self.feed_forward = nn.Sequential(nn.Conv2d(channels[-1], n_classes, 1, bias=False),
                                          nn.BatchNorm2d(n_classes), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return self.feed_forward(self.stages(self.in_c(x))).squeeze(2).squeeze(2)


def dcase2024_baseline(**kwargs):
    """dcase2024_task1_baseline models/baseline.py `get_model` strides and run_training.py's
    width defaults (base 32, multiplier 1.8, expansion 2.1)."""
    return MobileNetwork(**{**dict(base_channels=32, channels_multiplier=1.8, expansion_rate=2.1,
                                   strides=dict(b2=(1, 1), b3=(1, 2), b4=(2, 1)), use_grn=False),
                            **kwargs})


def cp_resnet_kernels(rho):
    """cpjku_dcase22 `get_model`'s kernel tables: stage -> (k1s, k2s), two blocks each at most."""
    e = rho - 4
    return {1: ([3, 3 - (-e > 2) * 2], [1, 3 - (-e > 1) * 2]),
            2: ([3 - (-e > 0) * 2, 1 + (e > 1) * 2], [1 + (e > 0) * 2, 1 + (e > 2) * 2]),
            3: ([1 + (e > 3) * 2, 1 + (e > 5) * 2], [1 + (e > 4) * 2, 1 + (e > 6) * 2])}


class BasicBlock(nn.Module):
    """cpjku_dcase22 BasicBlock: padding k // 3, all convs (the shortcut's too) grouped."""

    def __init__(self, in_c, out_c, k1, k2, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, out_c, k1, padding=k1 // 3, bias=False, groups=groups)
        self.bn1 = nn.BatchNorm2d(out_c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_c, out_c, k2, padding=k2 // 3, bias=False, groups=groups)
        self.bn2 = nn.BatchNorm2d(out_c)
        self.shortcut = nn.Sequential()
        if in_c != out_c:
            self.shortcut.add_module("conv", nn.Conv2d(in_c, out_c, 1, padding=0, bias=False,
                                                       groups=groups))
            self.shortcut.add_module("bn", nn.BatchNorm2d(out_c))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class CPResNet(nn.Module):
    """cpjku_dcase22 `get_model(...)` -> `Network`, with its argument names and defaults except
    `n_blocks` (the DCASE2022 `cp_mini_resnet` config's (2, 1, 1))."""

    def __init__(self, rho=4, in_channels=1, n_classes=10, base_channels=32, cut_channels_s2=0,
                 cut_channels_s3=0, channels_multiplier=2, n_blocks=(2, 1, 1), s1_group=1, s2_group=1,
                 s3_group=1):
        super().__init__()
        widths = [base_channels, base_channels * channels_multiplier - cut_channels_s2,
                  base_channels * channels_multiplier * channels_multiplier - cut_channels_s3]
        pools = {1: [0, 1, 2, 4], 2: [], 3: []}
        groups = {1: s1_group, 2: s2_group, 3: s3_group}
        self.in_c = nn.Sequential(nn.Conv2d(in_channels, widths[0], 5, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(True))
        in_c = widths[0]
        for s, (k1s, k2s) in cp_resnet_kernels(rho).items():
            stage = nn.Sequential()
            if 0 in pools[s]:
                stage.add_module("maxpool0_0", nn.MaxPool2d(2, 2))
            for index in range(n_blocks[s - 1]):
                stage.add_module(f"block{index + 1}", BasicBlock(in_c, widths[s - 1], k1s[index],
                                                                 k2s[index], groups[s]))
                in_c = widths[s - 1]
                for m_i, position in enumerate(pools[s]):
                    if index + 1 == position:
                        stage.add_module(f"maxpool{index + 1}_{m_i}", nn.MaxPool2d((2, 1), stride=(2, 1)))
            setattr(self, f"stage{s}", stage)
        self.feed_forward = nn.Sequential(nn.Conv2d(widths[2], n_classes, 1, padding=0, bias=False),
                                          nn.BatchNorm2d(n_classes), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.in_c(x))))
        return self.feed_forward(x).squeeze(2).squeeze(2)


def randomized(model, seed=0):
    """`model` in eval mode with random BN statistics / affines and GRN gamma / beta."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.num_batches_tracked.fill_(100)
            elif isinstance(m, GRN):
                m.gamma.normal_(0, 0.5)
                m.beta.normal_(0, 0.5)
    return model.eval()


# What the original training modules save beside their network (see the module docstring).
DCASE23_OTHERS = {}  # cpjku_dcase23: AugmentMelSTFT's window / preemphasis are not persistent
DCASE24_OTHERS = {  # dcase2024_task1_baseline: Resample(44100, 32000) and MelSpectrogram buffers
    "mel.0.kernel": (320, 1, 459), "mel.1.spectrogram.window": (3072,), "mel.1.mel_scale.fb": (2049, 256)}
DCASE22_OTHERS = {  # cpjku_dcase22: the PaSST teacher ensemble (two of its keys stand for all)
    "teacher_net.models.0.cls_token": (1, 1, 768), "teacher_net.models.0.head.1.weight": (10, 768)}


def lightning_ckpt(model, path, prefix="model.", others=DCASE24_OTHERS, **extra):
    """What a Lightning module holding `model` under `prefix`, beside `others`, saves."""
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    state.update({k: torch.ones(shape) for k, shape in others.items()})
    torch.save({"state_dict": state, "epoch": 3, "global_step": 99, **extra}, path)
    return path


def convert(arch, ckpt, out, *flags):
    """convert_weights.py; "logmel" keeps these tests off the CPJKU frontends (the default ones
    are tested once, in test_default_frontend_feeds_inference_load)."""
    convert_weights.main(["--arch", arch, "--torch-ckpt", str(ckpt), "--out", str(out),
                          "--frontend", "logmel", *flags])
    return read_spec(out / "model")


def _inputs(batch=2, n_mels=256, n_frames=65, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, n_mels, n_frames)).astype(np.float32)


def assert_matches(reference, out, x, forms=("model", "deploy")):
    """The saved `forms` (training, fused) give the reference's logits on log-mel `x` (B, F, T)."""
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)[:, None]).numpy()
    assert np.abs(expected).max() > 0.1  # logits worth comparing
    for form in forms:
        model, spec = load_model(out / form)
        assert spec["model"]["deploy"] == (form == "deploy")
        np.testing.assert_allclose(inference.model_fn(model)(x), expected, atol=TOL, rtol=0,
                                   err_msg=form)


def test_cp_mobile_lightning_checkpoint(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(convert_weights, "setup_logging", lambda *_: None)  # keeps caplog's handler
    reference = randomized(MobileNetwork())
    ckpt = lightning_ckpt(reference, tmp_path / "cp_mobile.ckpt", others=DCASE23_OTHERS,
                          hyper_parameters=argparse.Namespace(lr=0.001, n_blocks=[3, 2, 1]))
    with caplog.at_level(logging.INFO):
        spec = convert("cp_mobile", ckpt, tmp_path / "out", "--classes", ",".join("abcdefghij"))
    log = caplog.text
    assert "taking the network under 'model.'" in log
    assert "skipped 0 others" in log
    # The defaults fit: only the lowering a run records is written.
    assert set(spec["model"]["options"]) == {"conv_lowering"}
    assert spec["class_names"] == list("abcdefghij") and not spec["replaced_head"]
    assert spec["frontend"]["name"] == "logmel"
    assert_matches(reference, tmp_path / "out", _inputs())


def test_dcase2024_baseline_plain_state_dict(tmp_path):
    reference = randomized(dcase2024_baseline(), seed=1)
    torch.save(reference.state_dict(), tmp_path / "baseline.pt")
    spec = convert("dcase2024_baseline", tmp_path / "baseline.pt", tmp_path / "out")
    assert set(spec["model"]["options"]) == {"conv_lowering"}
    assert_matches(reference, tmp_path / "out", _inputs(seed=1))


def test_cp_resnet_lightning_checkpoint(tmp_path, caplog, monkeypatch):
    # asc_jax's defaults: the DCASE2022 layout (rho 8, stage 2 grouped by 2) at base 24.
    monkeypatch.setattr(convert_weights, "setup_logging", lambda *_: None)
    reference = randomized(CPResNet(rho=8, base_channels=24, s2_group=2), seed=2)
    ckpt = lightning_ckpt(reference, tmp_path / "r.ckpt", prefix="net.", others=DCASE22_OTHERS)
    with caplog.at_level(logging.INFO):
        spec = convert("cp_resnet", ckpt, tmp_path / "out")
    assert "taking the network under 'net.'" in caplog.text
    assert "skipped 2 others: teacher_net.models.0.cls_token" in caplog.text
    assert set(spec["model"]["options"]) == {"conv_lowering"}
    assert_matches(reference, tmp_path / "out", _inputs(seed=2))


@pytest.mark.parametrize("n_blocks", [(2, 2, 2), (2, 1, 1), (1, 2, 1)])
def test_cp_resnet_kernel_tables_are_the_originals(n_blocks):
    for rho in range(0, 17):
        tables = cp_resnet_kernels(rho)
        expected = tuple(tuple(zip(tables[s + 1][0][:n], tables[s + 1][1][:n]))
                         for s, n in enumerate(n_blocks))
        assert kernel_sizes(rho, n_blocks) == expected, rho


def test_cp_resnet_frontend_is_the_dcase22_one():
    # teachers_gang.py's student mel: window 2048, n_fft 2048, hop 744, no fmin / fmax jitter.
    options = frontend_entry("cp_resnet", None)["options"]
    assert (options["win_length"], options["n_fft"], options["hop_length"]) == (2048, 2048, 744)
    assert options["n_mels"] == 256 and options["fmax_aug_range"] == options["fmin_aug_range"] == 1
    assert frontend_entry("cp_mobile", None)["options"]["hop_length"] == 500
    assert frontend_entry("cp_resnet", "cpjku") == frontend_entry("cp_mobile", None)


def test_non_default_widths_are_inferred(tmp_path):
    # Base 24, multiplier 2.0, expansion 2.5, other blocks and classes, no GRN: compact options.
    compact = randomized(MobileNetwork(n_classes=7, base_channels=24, channels_multiplier=2.0,
                                       expansion_rate=2.5, n_blocks=(2, 2, 1), use_grn=False), seed=3)
    torch.save(compact.state_dict(), tmp_path / "compact.pt")
    spec = convert("cp_mobile", tmp_path / "compact.pt", tmp_path / "compact")
    options = spec["model"]["options"]
    assert {k: v for k, v in options.items() if k != "conv_lowering"} == dict(
        n_classes=7, base_channels=24, channels_multiplier=2.0, expansion_rate=2.5,
        n_blocks=[2, 2, 1], use_grn=False)
    # The fused form is derived from the training form: it alone suffices to compare here.
    x = _inputs(batch=1, seed=3)
    assert_matches(compact, tmp_path / "compact", x, forms=("deploy",))


def test_underivable_widths_are_written_out():
    # Widths no option derives (a pruned network): written out layer by layer, and they load.
    pruned = MobileNetwork(stage_channels=[32, 60, 160, 350], exp_channels=[90, 96, 180, 400, 480, 500])
    state_dict = {k: v.numpy() for k, v in pruned.state_dict().items()}
    key_map = KEY_MAPS.get("cp_mobile")
    options = infer_options("cp_mobile", map_state_dict(state_dict, key_map), {})
    assert options == dict(stage_channels=(32, 60, 160, 350),
                           expansion_channels=(90, 96, 180, 400, 480, 500))  # stem 32 // 4 derives
    convert_state_dict(nnx.eval_shape(lambda: cp_mobile(rngs=nnx.Rngs(0), **options)), state_dict,
                       key_map)


def test_cp_resnet_stage_cut_and_rho_are_inferred(tmp_path):
    # The DCASE2022 submission (README: cp_mini_resnet, rho 8, s2_group 2, cut_channels_s3 36,
    # base 32) but with rho 12: every later conv 3x3.
    reference = randomized(CPResNet(rho=12, cut_channels_s3=36, s2_group=2), seed=5)
    torch.save(reference.state_dict(), tmp_path / "r.pt")
    options = convert("cp_resnet", tmp_path / "r.pt", tmp_path / "out")["model"]["options"]
    assert options["base_channels"] == 32 and options["cut_channels_s3"] == 36
    assert "channels_multiplier" not in options and "cut_channels_s2" not in options
    assert "groups" not in options  # (1, 2, 1), the default
    assert kernel_sizes(options["rho"], (2, 1, 1)) == kernel_sizes(12, (2, 1, 1))
    assert_matches(reference, tmp_path / "out", _inputs(batch=1, seed=5), forms=("deploy",))


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A narrow baseline's Lightning checkpoint, for the failure cases (no conversion runs)."""
    reference = randomized(dcase2024_baseline(base_channels=16, n_blocks=(2, 1, 1)), seed=6)
    return reference, lightning_ckpt(reference, tmp_path_factory.mktemp("small") / "small.ckpt")


def test_contradicting_option_names_key_and_shapes(small_ckpt, tmp_path):
    _, ckpt = small_ckpt
    with pytest.raises(ValueError) as err:
        convert("dcase2024_baseline", ckpt, tmp_path / "out", "--model-kwargs", '{"base_channels": 24}')
    message = str(err.value)
    assert "stem/1/conv/kernel: checkpoint (3, 3, 4, 16) vs model (3, 3, 6, 24)" in message
    assert "stem/1/conv/kernel <- 'in_c.1.0.weight'" in message
    assert "given: ['base_channels']" in message
    assert not (tmp_path / "out").exists()


def test_unexpected_key_is_named(small_ckpt, tmp_path):
    reference, _ = small_ckpt
    state = {**reference.state_dict(), "stages.s1.b1.block.0.2.weight": torch.ones(3),
             "mel.window": torch.ones(4)}  # a plain state dict: nothing is skipped
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ValueError) as err:
        convert("dcase2024_baseline", tmp_path / "extra.pt", tmp_path / "out")
    message = str(err.value)
    assert "2 key(s) not in the model" in message
    assert "stages/0/0/block/0/2/scale <- 'stages.s1.b1.block.0.2.weight'" in message
    assert "mel/window <- 'mel.window'" in message


def test_options_the_weights_do_not_show_are_asked_for(tmp_path):
    # Three blocks: the baseline's default strides name a fourth, b4.
    torch.save(dcase2024_baseline(n_blocks=(1, 1, 1)).state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"strides name unknown blocks \['b4'\].*--strides"):
        convert("dcase2024_baseline", tmp_path / "three.pt", tmp_path / "out")


def test_head_replacement_strides_and_bad_flags(small_ckpt, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(convert_weights, "setup_logging", lambda *_: None)
    _, ckpt = small_ckpt
    strides = {"b1": [2, 2], "b3": [1, 2]}  # not visible in the weights: recorded as given
    with caplog.at_level(logging.INFO):
        spec = convert("dcase2024_baseline", ckpt, tmp_path / "out", "--num-classes", "3",
                       "--strides", json.dumps(strides))
    assert ("skipped 3 others: mel.0.kernel, mel.1.mel_scale.fb, mel.1.spectrogram.window"
            in caplog.text)
    assert spec["replaced_head"] and spec["model"]["options"]["n_classes"] == 3
    assert spec["model"]["options"]["strides"] == strides
    model, _ = load_model(tmp_path / "out" / "model")
    assert model.config.block_strides() == ((2, 2), (1, 1), (1, 2), (1, 1))
    assert model.head.conv.kernel.shape == (1, 1, 48, 3)
    with pytest.raises(ValueError, match="2 class names for a model of 10 classes"):
        convert("dcase2024_baseline", ckpt, tmp_path / "bad", "--classes", "a,b")
    with pytest.raises(ValueError, match="unknown frontend 'nope'; registered: .*logmel"):
        convert("dcase2024_baseline", ckpt, tmp_path / "bad", "--frontend", "nope")


@pytest.mark.skipif(not {"cpjku", "dcase2024"} <= set(frontends.FRONTENDS.names()),
                    reason="the cpjku / dcase2024 frontends are not registered yet")
def test_default_frontend_feeds_inference_load(small_ckpt, tmp_path):
    reference, ckpt = small_ckpt
    convert_weights.main(["--arch", "dcase2024_baseline", "--torch-ckpt", str(ckpt), "--out",
                          str(tmp_path / "out")])
    saved = inference.load(tmp_path / "out")
    assert saved.spec["model"]["deploy"] and saved.frontend.name == "dcase2024"
    assert saved.spec["frontend"] == frontends.FRONTENDS.get("dcase2024")({}).describe()
    wave = np.random.default_rng(7).normal(0, 0.1, (2, saved.frontend.sample_rate)).astype(np.float32)
    features = np.array(jax.jit(saved.frontend.features)(wave))  # writable, for torch
    with torch.no_grad():
        expected = reference(torch.from_numpy(features)[:, None]).numpy()
    np.testing.assert_allclose(np.asarray(saved.fn(wave)), expected, atol=TOL, rtol=0)
    assert read_spec(tmp_path / "out" / "model")["frontend"]["name"] == "dcase2024"
