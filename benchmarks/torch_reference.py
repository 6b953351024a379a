"""A PyTorch peer of the asc_jax CPU training and inference path, for `benchmarks.compare_torch`.

The same work on both sides, written the way a PyTorch user would write it:

  * `LogMel`: the asc_jax log-mel (`asc_jax.audio.features.log_mel` at its defaults): periodic
    Hann window of 3072 centred in n_fft 4096, hop 512, zero ("constant") padding, power
    spectrogram (torch.stft), 256 Slaney mels from `librosa.filters.mel`, log(x + 1e-5).
  * `freq_mask`: torchaudio's `FrequencyMasking(mask_param=48, iid_masks=True)` (torchaudio
    cannot be imported beside this torch, so its `mask_along_axis_iid` is restated).
  * `RepMobile`: CP-Mobile / Rep-Mobile (`asc_jax.models.rep_mobile` at its defaults) with the
    training-time depthwise branches (parallel 3x3, 1x1, 3x1, 1x3 depthwise convs, each with its
    own BatchNorm, summed, ReLU), or the deploy form (every conv with a bias, no BatchNorm, one
    3x3 depthwise conv per block). Widths are derived here, independently of asc_jax, so equal
    parameter counts check the architecture.
  * `TrainStep`: waveform -> log-mel -> frequency mask -> model -> cross-entropy -> Adam.

Module names mirror the asc_jax state paths ("stages.0.1.depthwise.branches.3x3.conv.weight" is
asc_jax's ("stages", 0, 1, "depthwise", "branches", "3x3", "conv", "kernel")), so weights move
between the two with `to_asc_jax_tree` / `load_asc_jax_tree` (tests/test_torch_reference.py
checks logits, features and one Adam step on shared weights).

PyTorch is optional for asc_jax: only the benchmark and its test import this module.
"""
from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BRANCH_KERNELS = {"3x3": (3, 3), "1x1": (1, 1), "3x1": (3, 1), "1x3": (1, 3)}
REP_BRANCHES = ("3x3", "1x1", "3x1", "1x3")


# ----------------------------------------------------------------------------------------------
# Frontend and augmentation
# ----------------------------------------------------------------------------------------------
class LogMel(nn.Module):
    """Waveforms (B, n_samples) -> log-mel (B, n_mels, n_frames), as `asc_jax.audio.features`."""

    def __init__(self, sample_rate=32_000, n_fft=4096, win_length=3072, hop_length=512, n_mels=256,
                 log_floor=1e-5):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.log_floor = n_fft, win_length, hop_length, log_floor
        # torch.stft centres a win_length window in n_fft, as librosa's pad_center does.
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # Slaney scale and norm
        self.register_buffer("mel_fb", torch.from_numpy(fb.astype(np.float32)), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, n_fft // 2 + 1, n_frames)
        return torch.log(torch.matmul(self.mel_fb, power) + self.log_floor)


def freq_mask(mel: torch.Tensor, mask_param: int = 48, mask_value: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """torchaudio `FrequencyMasking(mask_param, iid_masks=True)` on (B, n_mels, n_frames): one band
    [floor(min_value), floor(min_value) + floor(value)) per example, value = U[0,1) * mask_param,
    min_value = U[0,1) * (n_mels - value) (torchaudio.functional.mask_along_axis_iid)."""
    batch, n = mel.shape[0], mel.shape[-2]
    value = torch.rand(batch, generator=generator, device=mel.device) * mask_param
    min_value = torch.rand(batch, generator=generator, device=mel.device) * (n - value)
    start = min_value.long()[:, None]
    end = start + value.long()[:, None]
    bins = torch.arange(n, device=mel.device)[None, :]
    mask = (bins >= start) & (bins < end)
    return mel.masked_fill(mask[:, :, None], mask_value)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`, as the CPJKU CP-Mobile code uses it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")  # CPJKU `initialize_weights`
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional ReLU; deploy: one Conv2d with bias."""

    def __init__(self, in_c, out_c, kernel, stride=1, groups=1, act=True, deploy=False):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        padding = tuple((k - 1) // 2 for k in kernel)
        self.conv = _kaiming(nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=deploy))
        self.bn = None if deploy else nn.BatchNorm2d(out_c)
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.act else x


class RepDepthwise(nn.Module):
    """Parallel depthwise branches (each conv + its own BN), summed, ReLU; deploy: one conv."""

    def __init__(self, channels, stride, branches, deploy=False):
        super().__init__()
        if deploy:
            kernel = tuple(max(BRANCH_KERNELS[b][i] for b in branches) for i in (0, 1))
            self.fused = _kaiming(nn.Conv2d(channels, channels, kernel, stride,
                                            tuple((k - 1) // 2 for k in kernel), groups=channels))
            self.branches = None
        else:
            self.fused = None
            self.branches = nn.ModuleDict({b: ConvBN(channels, channels, BRANCH_KERNELS[b], stride,
                                                     groups=channels, act=False) for b in branches})

    def forward(self, x):
        if self.fused is not None:
            return F.relu(self.fused(x))
        y = None
        for branch in self.branches.values():
            y = branch(x) if y is None else y + branch(x)
        return F.relu(y)


class GRN(nn.Module):
    """Global Response Normalisation with scalar gamma / beta (CP-Mobile's)."""

    def __init__(self, eps=1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))
        self.eps = eps

    def forward(self, x):
        gx = torch.sqrt(torch.sum(x * x, dim=(2, 3), keepdim=True))  # L2 over (freq, time)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    """1x1 expand -> (multi-branch) depthwise -> 1x1 project, shortcut, GRN, ReLU."""

    def __init__(self, in_c, out_c, exp_c, stride, branches, deploy=False):
        super().__init__()
        self.expand = ConvBN(in_c, exp_c, 1, deploy=deploy)
        self.depthwise = RepDepthwise(exp_c, stride, branches, deploy=deploy)
        self.project = ConvBN(exp_c, out_c, 1, act=False, deploy=deploy)
        self.grn = GRN()
        self.shortcut = None
        if in_c == out_c:  # CPJKU: a shortcut only where widths match, avg-pooled if strided
            self.shortcut = (nn.Identity() if tuple(stride) == (1, 1)
                             else nn.AvgPool2d(3, stride, padding=1))  # count_include_pad=True

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return F.relu(self.grn(y))


class RepMobile(nn.Module):
    """CP-Mobile (`branches=("3x3",)`) / Rep-Mobile: stem of two 3x3 stride-2 convs, stages of
    blocks (3, 2, 1), 1x1 conv + BN head, global average pool. Input (B, 1, n_mels, n_frames)."""

    def __init__(self, n_classes=10, in_channels=1, base_channels=32, channels_multiplier=2.3,
                 expansion_rate=3.0, n_blocks=(3, 2, 1), strides=None, branches=REP_BRANCHES,
                 deploy=False):
        super().__init__()
        strides = {"b2": (2, 2), "b4": (2, 1)} if strides is None else strides
        base = make_divisible(base_channels, 8)
        channels = [base] + [make_divisible(base * channels_multiplier**s, 8) for s in range(len(n_blocks))]
        self.stem = nn.ModuleList([ConvBN(in_channels, channels[0] // 4, 3, 2, deploy=deploy),
                                   ConvBN(channels[0] // 4, channels[0], 3, 2, deploy=deploy)])
        self.stages = nn.ModuleList()
        block_id = 0
        for s, n in enumerate(n_blocks):
            stage = nn.ModuleList()
            in_c = channels[s]
            for _ in range(n):
                block_id += 1
                stage.append(Block(in_c, channels[s + 1], make_divisible(in_c * expansion_rate, 8),
                                   strides.get(f"b{block_id}", (1, 1)), branches, deploy=deploy))
                in_c = channels[s + 1]
            self.stages.append(stage)
        self.head = ConvBN(channels[-1], n_classes, 1, act=False, deploy=deploy)

    def forward(self, x):
        for conv in self.stem:
            x = conv(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(x).mean(dim=(2, 3))


def rep_mobile(deploy=False, **kwargs) -> RepMobile:
    return RepMobile(deploy=deploy, **kwargs)


def cp_mobile(deploy=False, **kwargs) -> RepMobile:
    return RepMobile(branches=("3x3",), deploy=deploy, **kwargs)


MODELS = {"rep_mobile": rep_mobile, "cp_mobile": cp_mobile}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Weights <-> asc_jax state trees (nested dicts as `asc_jax.surgery.module_tree` returns them)
# ----------------------------------------------------------------------------------------------
_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def weight_leaves(model: nn.Module):
    """(asc_jax path, torch tensor, transform to asc_jax layout) for every weight and BN statistic."""
    for name, module in model.named_modules():
        prefix = tuple(int(p) if p.isdigit() else p for p in name.split(".")) if name else ()
        if isinstance(module, nn.Conv2d):
            yield prefix + ("kernel",), module.weight, lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW->HWIO
            if module.bias is not None:
                yield prefix + ("bias",), module.bias, None
        elif isinstance(module, nn.BatchNorm2d):
            for leaf, key in _BN_LEAVES.items():
                yield prefix + (key,), getattr(module, leaf), None
        elif isinstance(module, GRN):
            yield prefix + ("gamma",), module.gamma, None
            yield prefix + ("beta",), module.beta, None


def to_asc_jax_tree(model: nn.Module) -> dict:
    """The model's weights and BN statistics as an asc_jax state tree of float32 NumPy arrays
    (`asc_jax.surgery.load_into(build, tree)` makes the asc_jax module from it)."""
    tree: dict = {}
    for path, tensor, transform in weight_leaves(model):
        value = tensor.detach().cpu().numpy().astype(np.float32)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(transform(value) if transform else value)
    return tree


def load_asc_jax_tree(model: nn.Module, tree: dict) -> nn.Module:
    """Copies an asc_jax state tree (`asc_jax.surgery.module_tree(model)`) into `model`, in place;
    fails on any missing, unused or mis-shaped entry."""
    from asc_jax.surgery import flatten

    flat = {path: np.asarray(v) for path, v in flatten(tree).items()}
    used = set()
    with torch.no_grad():
        for path, tensor, transform in weight_leaves(model):
            if path not in flat:
                raise KeyError(f"asc_jax tree has no {path}")
            value = flat[path]
            if transform is not None:  # HWIO -> OIHW
                value = np.transpose(value, (3, 2, 0, 1))
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{path}: asc_jax {value.shape} vs torch {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
            used.add(path)
    unused = set(flat) - used
    if unused:
        raise KeyError(f"asc_jax entries without a torch counterpart: {sorted(map(str, unused))}")
    return model


# ----------------------------------------------------------------------------------------------
# Training step
# ----------------------------------------------------------------------------------------------
class TrainStep:
    """One optimisation step: waveform -> log-mel -> freq mask -> model -> cross-entropy -> Adam.

    Features and mask carry no gradient (torch.no_grad, as a torchaudio frontend in the CPJKU
    training modules). `compile=True` wraps the forward-and-loss in `torch.compile` (inductor);
    the backward runs through AOTAutograd and Adam stays eager (`foreach`), as is common.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, *, mask_param: int | None = 48,
                 compile: bool = False, seed: int = 0):
        self.model = model.train()
        self.frontend = LogMel()
        self.mask_param = mask_param
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
        self.generator = torch.Generator().manual_seed(seed)
        self._loss = torch.compile(self.loss) if compile else self.loss

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mel = self.frontend(wave)
            if self.mask_param is not None:
                mel = freq_mask(mel, self.mask_param, generator=self.generator)
        return mel

    def loss(self, mel: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(mel[:, None]), label)

    def __call__(self, wave: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = self._loss(self.features(wave), label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
