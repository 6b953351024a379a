"""Foreign (PyTorch) weights -> Flax NNX models, through a strict merge; Orbax weight files.

The pipeline is declarative and strict (big_vision `models/common.py:merge_params` style):

1. `load_state_dict` reads a torch checkpoint (or a .npz) into {torch key: numpy array}; a
   Lightning module's network is selected by its attribute prefix (`LIGHTNING_PREFIXES`: "model."
   for CP-Mobile and the DCASE2024 baseline, "net." for the DCASE2022 CP-ResNet), its other
   entries (mel buffers, a distillation teacher) are logged and dropped.
2. `map_state_dict` renames every key with a `KeyMap` into a flat Flax path ("blocks/0/attn/qkv/
   kernel") and re-lays the array out (Linear weight -> transposed kernel, Conv OIHW -> HWIO, ...).
3. `infer_options` reads the model options the state dict's shapes fix (widths, blocks, classes;
   `OPTION_INFERENCE`); what shapes cannot say (strides, pooling) keeps the architecture's
   defaults unless given.
4. `merge_params` merges the mapped arrays into a freshly initialised model's weights and fails
   with the full list of missing, unexpected and mis-shaped keys; only keys matched by `dont_load`
   (the classifier, when replacing the head for a new class count) keep their fresh init.
5. `asc_jax.checkpoint.save_model` stores the weights (Orbax) with the model's registry name,
   options and frontend (model.json); a model with a fused form is saved as a train.py workdir
   does it: the training form in model/, the `asc_jax.reparam` fused form in deploy/.

PyTorch is optional: it is imported only when a torch checkpoint is read.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import asc_jax.models  # noqa: F401  (registers the model zoo)
import asc_jax.models.passt  # noqa: F401  (registers "passt")
from asc_jax.audio import frontends
from asc_jax.checkpoint import WEIGHTS, save_model
from asc_jax.models.cp_resnet import kernel_sizes
from asc_jax.models.registry import MODELS, has_deploy_form, with_default_lowering
from asc_jax.registry import Registry
from asc_jax.reparam import fuse
from asc_jax.surgery import check_tree_match

# The model state a weight file holds: parameters and BatchNorm running statistics, not RNG state.

TRANSFORMS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("weight transform")
TRANSFORMS.register("identity")(lambda w: w)
# torch Linear stores (out, in); nnx.Linear's kernel is (in, out).
TRANSFORMS.register("linear")(lambda w: w.T)
# torch ConvNd stores (out, in/groups, *kernel); nnx.Conv's kernel is (*kernel, in/groups, out).
TRANSFORMS.register("conv")(lambda w: np.transpose(w, (*range(2, w.ndim), 1, 0)))
# Channels-first grids (1, C, H, W) -> channels-last (1, H, W, C), e.g. PaSST's positional embeddings.
TRANSFORMS.register("nchw_to_nhwc")(lambda w: np.transpose(w, (0, 2, 3, 1)))


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """How the keys of a torch state dict become Flax state paths.

    Each torch key is (1) dropped if it fully matches an `ignore` pattern, (2) renumbered by every
    `renumber` pattern in order, (3) rewritten by every `renames` (pattern, replacement) in order
    with `re.sub`, (4) split at its last dot into a module
    path and a leaf. The leaf is renamed by torch convention (`weight` -> `kernel` for >= 2-D arrays,
    `scale` for 1-D ones; `running_mean`/`running_var` -> `mean`/`var`; others unchanged) and its
    array re-laid out by the leaf's default transform (`linear` for 2-D weights, `conv` for >= 3-D
    weights, `identity` otherwise) unless the renamed key fully matches a `transforms` pattern.
    BatchNorm's `num_batches_tracked` counters are always dropped: Flax BatchNorm has no counter.
    """

    # Regexes with one group capturing a number. Among the keys sharing the text before the group,
    # each distinct number becomes its 0-based rank: PyTorch's named Sequential children ("b4",
    # "b5" of stage "s2", numbered across stages; "block1") become nnx.List indices ("0", "1").
    renumber: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to each torch key.
    transforms: tuple[tuple[str, str], ...] = ()  # (regex on the renamed key, TRANSFORMS name).
    ignore: tuple[str, ...] = ()  # Regexes of torch keys deliberately not loaded (say why).
    head: tuple[str, ...] = ()  # Regexes of Flax paths re-initialised when the head is replaced.

    @classmethod
    def from_json(cls, path: str | Path) -> KeyMap:
        """Reads {"renumber": [...], "renames": [[pattern, repl], ...], "transforms": [...],
        "ignore": [...], "head": [...]}."""
        spec = json.loads(Path(path).read_text())
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown key map fields {sorted(unknown)}")
        return cls(renumber=tuple(spec.get("renumber", ())),
                   renames=tuple(tuple(r) for r in spec.get("renames", ())),
                   transforms=tuple(tuple(t) for t in spec.get("transforms", ())),
                   ignore=tuple(spec.get("ignore", ())), head=tuple(spec.get("head", ())))


KEY_MAPS: Registry[KeyMap] = Registry("key map")

# hear21passt PaSST -> asc_jax.models.passt.PaSST.
KEY_MAPS.register("passt")(KeyMap(
    renames=((r"^patch_embed\.proj\.", "patch_embed."),
             (r"^head\.0\.", "head_norm."),
             (r"^head\.1\.", "head.")),
    transforms=((r"(freq|time)_new_pos_embed", "nchw_to_nhwc"),),
    # hear21passt builds a distillation head but its forward never uses it.
    ignore=(r"head_dist\..*",),
    head=(r"head/(kernel|bias)",),
))

# CPJKU CP-Mobile (fschmid56/cpjku_dcase23 models/cp_mobile_clean.py) and the DCASE2024 Task 1
# baseline (CPJKU/dcase2024_task1_baseline models/baseline.py: the same network without GRN) ->
# RepMobile with the single 3x3 depthwise branch. A block keeps its three convs only inside
# `block` (Sequential 0: expand, 1: depthwise, 2: project), each a torchvision
# (Conv2d)NormActivation, itself a Sequential (0: conv without bias, 1: BN, 2: ReLU, none in
# the projection); GRN is `after_block_norm` (scalar gamma, beta); blocks are named b1..bN across
# all stages, so "stages.s2.b4" is stages/1/0. The quantization stubs and FloatFunctional hold no
# state. Unfused float checkpoints only: `fuse_model` / QAT checkpoints have other keys.
CPJKU_MOBILE = KeyMap(
    renumber=(r"^stages\.s\d+\.b(\d+)\.", r"^stages\.s(\d+)\."),
    renames=((r"^in_c\.(\d+)\.0\.", r"stem.\1.conv."),
             (r"^in_c\.(\d+)\.1\.", r"stem.\1.bn."),
             (r"^stages\.s(\d+)\.b(\d+)\.", r"stages.\1.\2."),
             (r"\.block\.0\.0\.", ".expand.conv."),
             (r"\.block\.0\.1\.", ".expand.bn."),
             (r"\.block\.1\.0\.", ".depthwise.branches.3x3.conv."),
             (r"\.block\.1\.1\.", ".depthwise.branches.3x3.bn."),
             (r"\.block\.2\.0\.", ".project.conv."),
             (r"\.block\.2\.1\.", ".project.bn."),
             (r"\.after_block_norm\.", ".grn."),
             (r"^feed_forward\.0\.", "head.conv."),
             (r"^feed_forward\.1\.", "head.bn.")),
    head=(r"head/(conv|bn)/\w+",),
)
KEY_MAPS.register("cp_mobile")(CPJKU_MOBILE)
KEY_MAPS.register("dcase2024_baseline")(CPJKU_MOBILE)

# CPJKU CP-ResNet (CPJKU/cpjku_dcase22 models/cp/cp_resnet.py) -> CPResNet. Stages are attributes
# stage1..3 whose blocks are named block1, block2 (between parameter-free max-pools
# "maxpool{after}_{i}"); a block has conv1, bn1, conv2, bn2 (ReLUs relu1 / relu2 hold no state) and,
# where widths change, shortcut.conv / shortcut.bn. (cpjku_dcase23 models/cp_resnet.py is another
# CP-ResNet: 4 blocks per stage, 2x2 pools, ungrouped shortcuts; CPResNet cannot represent it.)
KEY_MAPS.register("cp_resnet")(KeyMap(
    renumber=(r"^stage\d+\.block(\d+)\.", r"^stage(\d+)\."),
    renames=((r"^in_c\.0\.", "stem.conv."),
             (r"^in_c\.1\.", "stem.bn."),
             (r"^stage(\d+)\.block(\d+)\.", r"stages.\1.\2."),
             (r"\.conv(\d)\.", r".conv\1.conv."),
             (r"\.bn(\d)\.", r".conv\1.bn."),
             (r"^feed_forward\.0\.", "head.conv."),
             (r"^feed_forward\.1\.", "head.bn.")),
    head=(r"head/(conv|bn)/\w+",),
))

# The Lightning module attribute holding the network, where the original training code has one:
# `self.model` in cpjku_dcase23 run_training.py and dcase2024_task1_baseline run_training.py;
# in cpjku_dcase22 (experiments/dcase22/t1/teachers_gang.py) ba3l's Ba3lModule sets one attribute
# per `models` config entry: the student is `net` (beside `teacher_net`, `mel`, `teacher_mel`).
LIGHTNING_PREFIXES: Mapping[str, str] = {
    "cp_mobile": "model.", "dcase2024_baseline": "model.", "cp_resnet": "net."}

# The frontends these architectures' released checkpoints were trained on (asc_jax.audio.frontends
# names), recorded in model.json. PaSST's needs no entry: frontends.DEFAULT_FRONTENDS implies it.
CONVERTED_FRONTENDS: Mapping[str, str] = {
    "cp_mobile": "cpjku", "cp_resnet": "cpjku", "dcase2024_baseline": "dcase2024"}
# Options of those frontends where the original's settings differ from the preset. The DCASE2022
# CP-ResNet's `mel` (cpjku_dcase22 teachers_gang.py) is the same AugmentMelSTFT as the "cpjku"
# (DCASE2023 student) preset but with AugmentMelSTFT(n_mels=256, sr=32000, win_length=2048,
# hopsize=744, n_fft=2048, fmin=0, fmax=None, fmin_aug_range=1, fmax_aug_range=1): fmax 16 kHz.
CONVERTED_FRONTEND_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "cp_resnet": {"win_length": 2048, "hop_length": 744, "n_fft": 2048, "fmin_aug_range": 1,
                  "fmax_aug_range": 1}}


def _leaf_rule(leaf: str, ndim: int) -> tuple[str, str]:
    """(Flax leaf name, default transform) of a torch parameter or buffer name."""
    if leaf == "weight":
        if ndim == 1:
            return "scale", "identity"
        return "kernel", "linear" if ndim == 2 else "conv"
    return {"running_mean": "mean", "running_var": "var"}.get(leaf, leaf), "identity"


def _renumber(keys: Sequence[str], pattern: str) -> list[str]:
    """`keys` with the number `pattern`'s group captures replaced by its rank (`KeyMap.renumber`)."""
    regex = re.compile(pattern)
    if regex.groups != 1:
        raise ValueError(f"renumber pattern {pattern!r} needs exactly one group, has {regex.groups}")
    matches = [regex.search(k) for k in keys]
    numbers: dict[str, set[int]] = {}
    for key, m in zip(keys, matches):
        if m is not None:
            if not m.group(1).isdigit():
                raise ValueError(f"renumber pattern {pattern!r} captured {m.group(1)!r} in {key!r}, "
                                 "not a number")
            numbers.setdefault(key[:m.start(1)], set()).add(int(m.group(1)))
    ranks = {scope: {n: i for i, n in enumerate(sorted(ns))} for scope, ns in numbers.items()}
    return [key if m is None else
            key[:m.start(1)] + str(ranks[key[:m.start(1)]][int(m.group(1))]) + key[m.end(1):]
            for key, m in zip(keys, matches)]


def map_state_dict_with_sources(state_dict: Mapping[str, np.ndarray], key_map: KeyMap
                                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`map_state_dict` and {flax path: the torch key it came from}, for error messages."""
    keys = [k for k in state_dict
            if not k.endswith("num_batches_tracked") and not _matches(k, key_map.ignore)]
    renamed = list(keys)
    for pattern in key_map.renumber:
        renamed = _renumber(renamed, pattern)
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for key, name in zip(keys, renamed):
        for pattern, replacement in key_map.renames:
            name = re.sub(pattern, replacement, name)
        module, _, leaf = name.rpartition(".")
        value = np.asarray(state_dict[key])
        leaf, transform = _leaf_rule(leaf, value.ndim)
        transform = next((t for p, t in key_map.transforms if re.fullmatch(p, name)), transform)
        path = "/".join([*filter(None, module.split(".")), leaf])
        if path in out:
            raise ValueError(f"torch keys {source[path]!r} and {key!r} both map to {path!r}")
        out[path], source[path] = TRANSFORMS.get(transform)(value), key
    return out, source


def map_state_dict(state_dict: Mapping[str, np.ndarray], key_map: KeyMap) -> dict[str, np.ndarray]:
    """Applies `key_map` to a {torch key: array} dict; returns {flax path "a/b/0/c": array}."""
    return map_state_dict_with_sources(state_dict, key_map)[0]


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def merge_params(loaded: Mapping[str, Any], inited: Mapping[str, Any], *,
                 dont_load: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Strictly merges flat loaded weights into flat initialised weights.

    Args:
      loaded: {path: array} from a foreign checkpoint (after `map_state_dict`).
      inited: {path: array} of a freshly initialised model; defines the expected keys, shapes and
        dtypes. Paths not matched by `dont_load` may hold abstract values (jax.ShapeDtypeStruct,
        from an `nnx.eval_shape` model).
      dont_load: regexes of paths that keep their `inited` value (their loaded value, if any, is
        discarded), e.g. a classifier replaced for a new number of classes.

    Returns:
      {path: array} with every key of `inited`, loaded values cast to the inited dtype.

    Raises:
      ValueError: listing every inited key missing from `loaded`, every loaded key the model does
        not have, and every shape mismatch, all at once.
    """
    check_tree_match({k: v for k, v in loaded.items() if not _matches(k, dont_load)},
                     {k: v for k, v in inited.items() if not _matches(k, dont_load)},
                     what="strict weight merge")
    return {k: (np.asarray(v) if _matches(k, dont_load)
                else np.asarray(loaded[k], dtype=np.dtype(v.dtype)))
            for k, v in inited.items()}


def flat_weights(model: nnx.Module) -> dict[str, jax.Array]:
    """{path "a/b/0/c": array} of the model's parameters and batch statistics."""
    return {"/".join(map(str, path)): var.get_value()
            for path, var in nnx.to_flat_state(nnx.state(model, WEIGHTS))}


def load_flat_weights(model: nnx.Module, flat: Mapping[str, Any]) -> None:
    """Writes {path: array} (exactly the model's weight paths) into the model in place."""
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(model, WEIGHTS))]
    keys = {"/".join(map(str, p)) for p in paths}
    if keys != set(flat):
        raise ValueError(f"weights do not match the model: missing {sorted(keys - set(flat))}, "
                         f"unexpected {sorted(set(flat) - keys)}")
    nnx.update(model, nnx.from_flat_state(
        [(p, jnp.asarray(flat["/".join(map(str, p))])) for p in paths]))


def head_mismatch(loaded: Mapping[str, Any], model: nnx.Module, key_map: KeyMap) -> bool:
    """Whether the checkpoint's classifier (`key_map.head`) differs in shape from the model's."""
    inited = flat_weights(model)
    heads = [k for k in inited if _matches(k, key_map.head)]
    return any(k in loaded and np.shape(loaded[k]) != np.shape(inited[k]) for k in heads)


def _torch_keys_of_problems(mapped: Mapping[str, Any], inited: Mapping[str, Any],
                            source: Mapping[str, str], dont_load: Sequence[str]) -> list[str]:
    """"flax path <- torch key" for every loaded path the model lacks or has in another shape."""
    return [f"{path} <- {source[path]!r}" for path in sorted(mapped)
            if not _matches(path, dont_load)
            and (path not in inited or np.shape(mapped[path]) != np.shape(inited[path]))]


def convert_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], key_map: KeyMap, *,
                       replace_head: bool = False) -> nnx.Module:
    """Loads a torch state dict into `model` (in place) through `key_map` and a strict merge.

    With `replace_head`, the paths of `key_map.head` keep the model's fresh initialisation (a new
    classifier, e.g. for a different number of classes); every other weight must load exactly.

    Raises:
      ValueError: the strict merge's report (missing, unexpected, mis-shaped Flax paths with both
        shapes), followed by the torch key of each unexpected or mis-shaped path.
    """
    inited = flat_weights(model)
    dont_load: tuple[str, ...] = ()
    if replace_head:
        if not any(_matches(k, key_map.head) for k in inited):
            raise ValueError(f"replace_head: the key map's head patterns {key_map.head} match no "
                             "model weight")
        dont_load = key_map.head
    mapped, source = map_state_dict_with_sources(state_dict, key_map)
    try:
        merged = merge_params(mapped, inited, dont_load=dont_load)
    except ValueError as e:
        culprits = _torch_keys_of_problems(mapped, inited, source, dont_load)
        if not culprits:
            raise
        raise ValueError(f"{e}\ntorch keys of the unexpected and mis-shaped paths:\n  "
                         + "\n  ".join(culprits)) from None
    load_flat_weights(model, merged)
    return model


# ------------------------------------------------------------------------------------------------
# Model options from the checkpoint's shapes.
#
# An inference function reads the mapped checkpoint ({flax path: array}) and returns the options
# its shapes fix, leaving out those in `given` (the user's: they win, and a contradiction fails
# in the strict merge, naming the key and both shapes). `config` is the architecture's config
# with `given` applied, so each function sees the defaults of the options it does not infer.
# Widths are written as the compact options (base_channels, channels_multiplier, ...) when those
# reproduce them, as explicit per-layer widths only otherwise (a pruned or hand-made network).

OPTION_INFERENCE: Registry[Callable[[Mapping[str, np.ndarray], Mapping[str, Any], Any], dict]] = \
    Registry("option inference")


def _shape(weights: Mapping[str, np.ndarray], path: str) -> tuple[int, ...]:
    if path not in weights:
        raise ValueError(f"cannot infer the model options: the checkpoint has no {path!r} after the "
                         "key map (a checkpoint of another architecture, or another prefix?)")
    return tuple(np.shape(weights[path]))


def _blocks_per_stage(weights: Mapping[str, np.ndarray], pattern: str) -> tuple[int, ...]:
    """Blocks per stage, counted from the paths `pattern` (groups: stage, block) fully matches."""
    blocks: dict[int, set[int]] = {}
    for path in weights:
        if m := re.fullmatch(pattern, path):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks:
        raise ValueError(f"cannot infer the model options: no checkpoint path matches {pattern!r}")
    return tuple(len(blocks.get(s, ())) for s in range(max(blocks) + 1))


def _given_free(found: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k not in given}


def _ratios(num: Sequence[int], den: Sequence[int], powers: Sequence[int]) -> list[float]:
    """Round candidate factors f with num ~ den * f**power, to 1 then 2 decimals, deduplicated."""
    guesses = [round((n / d) ** (1 / k), digits) for digits in (1, 2)
               for n, d, k in zip(num, den, powers) if n > 0 and d > 0 and k > 0]
    return list(dict.fromkeys(guesses))


def _rep_mobile_widths(config: Any, given: Mapping[str, Any], stem: int, stages: tuple[int, ...],
                       expansions: tuple[int, ...]) -> dict[str, Any]:
    """Width options of a RepMobileConfig reproducing the checkpoint's widths."""
    out: dict[str, Any] = {}
    if "stage_channels" not in given:
        multipliers = [config.channels_multiplier]
        if "channels_multiplier" not in given:
            # stages[k] ~ base * multiplier ** (k - 1): stage 1 keeps the stem's width.
            multipliers += _ratios(stages[2:], [stages[0]] * (len(stages) - 2), range(1, len(stages) - 1))
        base = given.get("base_channels", stages[0])
        fit = next((m for m in multipliers if dataclasses.replace(
            config, base_channels=base, channels_multiplier=m, stage_channels=None,
            expansion_channels=None).widths()[1] == stages), None)
        if fit is not None:
            out.update(base_channels=base, channels_multiplier=fit)
        elif {"base_channels", "channels_multiplier"} & set(given):
            return out  # the given options contradict the checkpoint: the strict merge says where
        else:
            out["stage_channels"] = stages
        config = dataclasses.replace(config, **out)
    if "expansion_channels" not in given:
        n_blocks = config.n_blocks
        block_in = [c for s, n in enumerate(n_blocks)
                    for c in [stages[s]] + [stages[s + 1]] * (n - 1)]
        rates = [config.expansion_rate]
        if "expansion_rate" not in given:
            rates += _ratios(expansions, block_in, [1] * len(block_in))
        fit = next((r for r in rates if dataclasses.replace(
            config, expansion_rate=r, expansion_channels=None).widths()[2] == expansions), None)
        if fit is not None:
            out["expansion_rate"] = fit
        elif "expansion_rate" not in given:
            out["expansion_channels"] = expansions
        config = dataclasses.replace(config, **out)
    if "stem_channels" not in given and config.widths()[0] != stem:
        out["stem_channels"] = stem
    return out


def _infer_rep_mobile(weights: Mapping[str, np.ndarray], given: Mapping[str, Any], config: Any
                      ) -> dict[str, Any]:
    """CP-Mobile / DCASE2024 baseline: classes, input channels, blocks, GRN, widths."""
    stem = _shape(weights, "stem/0/conv/kernel")  # (3, 3, in_channels, stem_channels)
    n_blocks = _blocks_per_stage(weights, r"stages/(\d+)/(\d+)/expand/conv/kernel")
    stages = (_shape(weights, "stem/1/conv/kernel")[3],) + tuple(
        _shape(weights, f"stages/{s}/{n - 1}/project/conv/kernel")[3] for s, n in enumerate(n_blocks))
    expansions = tuple(_shape(weights, f"stages/{s}/{b}/expand/conv/kernel")[3]
                       for s, n in enumerate(n_blocks) for b in range(n))
    found = _given_free(dict(
        n_classes=_shape(weights, "head/conv/kernel")[3], in_channels=stem[2], n_blocks=n_blocks,
        use_grn=any(re.fullmatch(r"stages/\d+/\d+/grn/gamma", p) for p in weights)), given)
    config = dataclasses.replace(config, **found)
    return {**found, **_rep_mobile_widths(config, given, stem[3], stages, expansions)}


OPTION_INFERENCE.register("cp_mobile")(_infer_rep_mobile)
OPTION_INFERENCE.register("dcase2024_baseline")(_infer_rep_mobile)

# Receptive-field parameters tried when the default's kernel table does not fit; from 11 on
# every table is the same (all 3x3 but the first block's second conv).
_RHOS = range(0, 12)


@OPTION_INFERENCE.register("cp_resnet")
def _infer_cp_resnet(weights: Mapping[str, np.ndarray], given: Mapping[str, Any], config: Any
                     ) -> dict[str, Any]:
    """CP-ResNet: classes, input channels, blocks, groups, rho (from the kernels), widths."""
    stem = _shape(weights, "stem/conv/kernel")  # (5, 5, in_channels, base_channels)
    n_blocks = _blocks_per_stage(weights, r"stages/(\d+)/(\d+)/conv1/conv/kernel")
    conv = lambda s, b, i: _shape(weights, f"stages/{s}/{b}/conv{i}/conv/kernel")  # noqa: E731
    widths = tuple(conv(s, 0, 1)[3] for s in range(len(n_blocks)))
    found = _given_free(dict(
        n_classes=_shape(weights, "head/conv/kernel")[3], in_channels=stem[2], n_blocks=n_blocks,
        base_channels=stem[3], groups=tuple(w // conv(s, 0, 2)[2] for s, w in enumerate(widths))),
        given)
    config = dataclasses.replace(config, **found)
    if "rho" not in given:
        kernels = tuple(tuple((conv(s, b, 1)[0], conv(s, b, 2)[0]) for b in range(n))
                        for s, n in enumerate(n_blocks))
        rho = next((r for r in (config.rho, *_RHOS) if kernel_sizes(r, config.n_blocks) == kernels),
                   None)
        if rho is None:
            raise ValueError(f"cp_resnet: no rho gives the checkpoint's kernel sizes {kernels} "
                             "(per stage, per block: (conv1, conv2))")
        found["rho"] = rho
    cut_keys = ("cut_channels_s2", "cut_channels_s3")
    if "channels_multiplier" not in given or not set(cut_keys) <= set(given):
        multipliers = [config.channels_multiplier]
        if "channels_multiplier" not in given:
            multipliers += _ratios(widths[1:2], [config.base_channels], [1])
        uncut = [dataclasses.replace(config, channels_multiplier=m, cut_channels_s2=0,
                                     cut_channels_s3=0).widths() for m in multipliers]
        candidates = [{"channels_multiplier": m, **{k: given.get(k, full[s + 1] - widths[s + 1])
                                                    for s, k in enumerate(cut_keys)}}
                      for m, full in zip(multipliers, uncut)]
        # The default multiplier with cuts that narrow (the DCASE2022 submission's stage-3 cut of
        # 36), else a multiplier that needs no widening.
        fit = next((c for c in candidates if min(c[k] for k in cut_keys) >= 0), candidates[0])
        found.update(_given_free(fit, given))
    return found


def infer_options(arch: str, weights: Mapping[str, np.ndarray], given: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """Options of `arch` that reproduce the checkpoint, as model.json records them.

    Args:
      arch: MODELS registry name; without an `OPTION_INFERENCE` entry `given` is returned.
      weights: the mapped checkpoint, {flax path: array}.
      given: options the user set; they are kept as they are.

    Returns:
      `given` plus the inferred options that differ from the architecture's defaults.
    """
    if arch not in OPTION_INFERENCE:
        return dict(given)
    config = nnx.eval_shape(lambda: MODELS.get(arch)(rngs=nnx.Rngs(0), **given)).config
    inferred = OPTION_INFERENCE.get(arch)(weights, given, config)
    return {**{k: v for k, v in inferred.items() if v != getattr(config, k)}, **given}


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install torch==2.13.0 "
                          "(the CPU wheel), or convert the state dict to .npz elsewhere") from e
    return torch


def _some(keys: Sequence[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def select_prefix(state_dict: Mapping[str, np.ndarray], prefix: str, where: str | Path
                  ) -> dict[str, np.ndarray]:
    """The entries under `prefix`, with it stripped; the others are logged (count and names).

    Raises:
      ValueError: naming `where` and some keys, when no key starts with `prefix`.
    """
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise ValueError(f"{where}: no key starts with prefix {prefix!r}; keys: {_some(state_dict, 10)}")
    skipped = [k for k in state_dict if not k.startswith(prefix)]
    logging.info("%s: loading the %d keys under %r; skipped %d others%s", where, len(selected), prefix,
                 len(skipped), f": {_some(skipped)}" if skipped else "")
    return selected


def load_state_dict(path: str | Path, *, prefix: str = "") -> dict[str, np.ndarray]:
    """Reads a checkpoint file into {key: float32/int numpy array}.

    `.npz` files are read with numpy; anything else with `torch.load(weights_only=True)`, unwrapping
    Lightning / DeiT style {"state_dict": ...} or {"model": ...} containers. argparse.Namespace
    objects (Lightning hyper-parameters of argparse-driven training scripts) are allowed in the
    file; any other non-tensor object fails, naming the file.

    Args:
      path: checkpoint file.
      prefix: keep only keys starting with it and strip it (e.g. "net." for a Lightning module
        that wraps the network); the other keys are logged (`select_prefix`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            raw = {k: data[k] for k in data.files}
    else:
        torch = _import_torch()
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: holds objects other than tensors, which are not loaded "
                             f"(weights_only): {str(e).splitlines()[-1]}. Save its state dict alone "
                             "(torch.save(module.state_dict(), ...)) where the code that wrote it "
                             "is installed") from None
        for container in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(container), Mapping):
                obj = obj[container]
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        raw = {}
        for key, value in obj.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            value = value.detach().cpu()
            raw[key] = (value.float() if value.is_floating_point() else value).numpy()
    return select_prefix(raw, prefix, path) if prefix else raw


def _auto_prefix(arch: str, state_dict: Mapping[str, np.ndarray], where: str | Path) -> str:
    """`LIGHTNING_PREFIXES[arch]` when some key starts with it (a Lightning checkpoint), else ""."""
    prefix = LIGHTNING_PREFIXES.get(arch, "")
    if prefix and any(k.startswith(prefix) for k in state_dict):
        logging.info("%s: a Lightning checkpoint: taking the network under %r", where, prefix)
        return prefix
    return ""


def frontend_entry(arch: str, name: str | None) -> dict | None:
    """model.json's {"name", "options"} of frontend `name` (default: `CONVERTED_FRONTENDS[arch]`
    with `CONVERTED_FRONTEND_OPTIONS[arch]`), with every option written out as training writes
    it; None when neither names one. A `name` given is recorded with its preset's options.

    Raises:
      ValueError: naming the registered frontends, for an unknown name.
    """
    options = {} if name else dict(CONVERTED_FRONTEND_OPTIONS.get(arch, {}))
    name = name or CONVERTED_FRONTENDS.get(arch)
    if name is None:
        if arch not in frontends.DEFAULT_FRONTENDS:
            logging.warning("no frontend recorded for %s (--frontend, one of %s): asc_jax.inference."
                            "load will refuse the model until model.json names one", arch,
                            frontends.FRONTENDS.names())
        return None
    if name not in frontends.FRONTENDS:
        raise ValueError(f"unknown frontend {name!r}; registered: {frontends.FRONTENDS.names()}")
    return frontends.FRONTENDS.get(name)(options).describe()


def _initialise_rest(model: nnx.Module, build: Callable[[], nnx.Module], keep: Sequence[str]) -> None:
    """Initialises, in place, an `nnx.eval_shape` model's non-weight state (RNG streams) and the
    weights whose paths match `keep` (a replaced head), in one jitted program that XLA prunes to
    them; the other weights stay abstract, about to be loaded. As `checkpoint.load_model` does:
    initialising every weight only to overwrite it costs most of a conversion's time on CPU."""
    def kept(path: tuple, _: Any) -> bool:
        return _matches("/".join(map(str, path)), keep)

    wanted = nnx.Any(nnx.Not(WEIGHTS), nnx.All(WEIGHTS, kept))
    if jax.tree.leaves(nnx.state(model, wanted)):
        nnx.update(model, jax.jit(lambda: nnx.state(build(), wanted))())


def convert_checkpoint(arch: str, checkpoint: str | Path, out: str | Path, *,
                       n_classes: int | None = None, variant: str | None = None,
                       key_map: KeyMap | None = None, prefix: str | None = None,
                       model_kwargs: Mapping[str, Any] | None = None, frontend: str | None = None,
                       class_names: Sequence[str] | None = None, seed: int = 0) -> nnx.Module:
    """Converts a foreign checkpoint into the registered model `arch` and saves it to `out`.

    A model with a fused deploy form (the CNNs) is saved as a train.py workdir: `out/model` (the
    training form, for `model.init_from` and pruning) and `out/deploy` (BatchNorm folded, for
    predict, quantize and export; `inference.load(out)` picks it). Others are saved to `out`.

    Args:
      arch: MODELS registry name.
      checkpoint: torch checkpoint (Lightning .ckpt or state dict) or .npz file.
      out: new saved-model directory.
      n_classes: classes of the converted model; when the checkpoint's classifier has another
        shape, the classifier is re-initialised (head replacement) and all other weights load.
      variant: the model's variant (PaSST: which released layout).
      key_map: defaults to the one registered for `arch`, else the plain torch naming rules.
      prefix: see `load_state_dict`; None: `LIGHTNING_PREFIXES[arch]` if some key starts with
        it, else none.
      model_kwargs: model options; those the checkpoint's shapes fix and that are not given here
        are inferred (`infer_options`), the rest keep the architecture's defaults.
      frontend: FRONTENDS name recorded in model.json; None: `CONVERTED_FRONTENDS[arch]` (with
        `CONVERTED_FRONTEND_OPTIONS[arch]`).
      class_names: names of the logits, recorded as model.json's "class_names".
      seed: initialisation seed (for a replaced head).

    Returns:
      The converted model (training form).
    """
    given = dict(model_kwargs or {})
    if variant is not None:
        given["variant"] = variant
    if n_classes is not None:
        given["n_classes"] = n_classes
    if key_map is None:
        key_map = KEY_MAPS.get(arch) if arch in KEY_MAPS else KeyMap()
    MODELS.get(arch)  # an unknown architecture fails before the checkpoint is read
    extra: dict[str, Any] = {"converted_from": str(Path(checkpoint).absolute())}
    recorded = frontend_entry(arch, frontend)
    if recorded is not None:
        extra["frontend"] = recorded
    state_dict = load_state_dict(checkpoint)
    if prefix is None:
        prefix = _auto_prefix(arch, state_dict, checkpoint)
    if prefix:
        state_dict = select_prefix(state_dict, prefix, checkpoint)
    weights = map_state_dict(state_dict, key_map)
    options = with_default_lowering(arch, infer_options(arch, weights, given))
    inferred = sorted(set(options) - set(given) - {"conv_lowering"})
    logging.info("%s options: %s (inferred from the checkpoint: %s)", arch, options, inferred or "none")

    def build() -> nnx.Module:
        return MODELS.get(arch)(rngs=nnx.Rngs(seed), **options)

    try:
        model = nnx.eval_shape(build)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arch} does not build with options {options} (inferred from the "
                         f"checkpoint: {inferred or 'none'}): {e}. Options the weights do not show "
                         "(strides, pools) keep the architecture's defaults unless given "
                         "(--model-kwargs, --strides)") from None
    if class_names is not None:
        if len(class_names) != model.config.n_classes:
            raise ValueError(f"{len(class_names)} class names for a model of "
                             f"{model.config.n_classes} classes: {list(class_names)}")
        extra["class_names"] = list(class_names)
    replace_head = n_classes is not None and head_mismatch(weights, model, key_map)
    _initialise_rest(model, build, key_map.head if replace_head else ())
    if replace_head:
        logging.info("checkpoint classifier differs from n_classes=%d: re-initialising the head",
                     n_classes)
    try:
        convert_state_dict(model, state_dict, key_map, replace_head=replace_head)
    except ValueError as e:
        raise ValueError(f"{checkpoint} -> {arch} with options {options} (inferred: "
                         f"{inferred or 'none'}; given: {sorted(given) or 'none'}):\n{e}") from None
    extra["replaced_head"] = replace_head
    out = Path(out)
    if has_deploy_form(arch):
        deploy = fuse(model, lambda: MODELS.get(arch)(rngs=nnx.Rngs(0), deploy=True, **options))
        save_model(out / "model", model, name=arch, options=options, **extra)
        save_model(out / "deploy", deploy, name=arch, options=options, deploy=True, **extra)
    else:
        save_model(out, model, name=arch, options=options, **extra)
    return model
