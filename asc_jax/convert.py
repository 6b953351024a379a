"""Foreign (PyTorch) weights -> Flax NNX models, through a strict merge; Orbax weight files.

The pipeline is declarative and strict (big_vision `models/common.py:merge_params` style):

1. `load_state_dict` reads a torch checkpoint (or a .npz) into {torch key: numpy array}.
2. `map_state_dict` renames every key with a `KeyMap` into a flat Flax path ("blocks/0/attn/qkv/
   kernel") and re-lays the array out (Linear weight -> transposed kernel, Conv OIHW -> HWIO, ...).
3. `merge_params` merges the mapped arrays into a freshly initialised model's weights and fails
   with the full list of missing, unexpected and mis-shaped keys; only keys matched by `dont_load`
   (the classifier, when replacing the head for a new class count) keep their fresh init.
4. `asc_jax.checkpoint.save_model` stores the weights (Orbax) with the model's registry name and
   options (model.json); `asc_jax.checkpoint.load_model` / `restore_weights`
   restore them into an `nnx.eval_shape` abstract model.

PyTorch is optional: it is imported only when a torch checkpoint is read.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import asc_jax.models  # noqa: F401  (registers the model zoo)
import asc_jax.models.passt  # noqa: F401  (registers "passt")
from asc_jax.checkpoint import WEIGHTS, save_model
from asc_jax.models.registry import MODELS
from asc_jax.registry import Registry
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

    Each torch key is (1) dropped if it fully matches an `ignore` pattern, (2) rewritten by every
    `renames` (pattern, replacement) in order with `re.sub`, (3) split at its last dot into a module
    path and a leaf. The leaf is renamed by torch convention (`weight` -> `kernel` for >= 2-D arrays,
    `scale` for 1-D ones; `running_mean`/`running_var` -> `mean`/`var`; others unchanged) and its
    array re-laid out by the leaf's default transform (`linear` for 2-D weights, `conv` for >= 3-D
    weights, `identity` otherwise) unless the renamed key fully matches a `transforms` pattern.
    BatchNorm's `num_batches_tracked` counters are always dropped: Flax BatchNorm has no counter.
    """

    renames: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to each torch key.
    transforms: tuple[tuple[str, str], ...] = ()  # (regex on the renamed key, TRANSFORMS name).
    ignore: tuple[str, ...] = ()  # Regexes of torch keys deliberately not loaded (say why).
    head: tuple[str, ...] = ()  # Regexes of Flax paths re-initialised when the head is replaced.

    @classmethod
    def from_json(cls, path: str | Path) -> KeyMap:
        """Reads {"renames": [[pattern, repl], ...], "transforms": [...], "ignore": [...], "head": [...]}."""
        spec = json.loads(Path(path).read_text())
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown key map fields {sorted(unknown)}")
        return cls(renames=tuple(tuple(r) for r in spec.get("renames", ())),
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


def _leaf_rule(leaf: str, ndim: int) -> tuple[str, str]:
    """(Flax leaf name, default transform) of a torch parameter or buffer name."""
    if leaf == "weight":
        if ndim == 1:
            return "scale", "identity"
        return "kernel", "linear" if ndim == 2 else "conv"
    return {"running_mean": "mean", "running_var": "var"}.get(leaf, leaf), "identity"


def map_state_dict(state_dict: Mapping[str, np.ndarray], key_map: KeyMap) -> dict[str, np.ndarray]:
    """Applies `key_map` to a {torch key: array} dict; returns {flax path "a/b/0/c": array}."""
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or any(re.fullmatch(p, key) for p in key_map.ignore):
            continue
        renamed = key
        for pattern, replacement in key_map.renames:
            renamed = re.sub(pattern, replacement, renamed)
        module, _, leaf = renamed.rpartition(".")
        value = np.asarray(value)
        name, transform = _leaf_rule(leaf, value.ndim)
        transform = next((t for p, t in key_map.transforms if re.fullmatch(p, renamed)), transform)
        path = "/".join([*filter(None, module.split(".")), name])
        if path in out:
            raise ValueError(f"torch keys {source[path]!r} and {key!r} both map to {path!r}")
        out[path], source[path] = TRANSFORMS.get(transform)(value), key
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def merge_params(loaded: Mapping[str, Any], inited: Mapping[str, Any], *,
                 dont_load: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Strictly merges flat loaded weights into flat initialised weights.

    Args:
      loaded: {path: array} from a foreign checkpoint (after `map_state_dict`).
      inited: {path: array} of a freshly initialised model; defines the expected keys and shapes.
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
                else np.asarray(loaded[k], dtype=np.asarray(v).dtype))
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


def convert_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], key_map: KeyMap, *,
                       replace_head: bool = False) -> nnx.Module:
    """Loads a torch state dict into `model` (in place) through `key_map` and a strict merge.

    With `replace_head`, the paths of `key_map.head` keep the model's fresh initialisation (a new
    classifier, e.g. for a different number of classes); every other weight must load exactly.
    """
    inited = flat_weights(model)
    dont_load: tuple[str, ...] = ()
    if replace_head:
        if not any(_matches(k, key_map.head) for k in inited):
            raise ValueError(f"replace_head: the key map's head patterns {key_map.head} match no "
                             "model weight")
        dont_load = key_map.head
    load_flat_weights(model, merge_params(map_state_dict(state_dict, key_map), inited,
                                          dont_load=dont_load))
    return model


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install torch==2.13.0 "
                          "(the CPU wheel), or convert the state dict to .npz elsewhere") from e
    return torch


def load_state_dict(path: str | Path, *, prefix: str = "") -> dict[str, np.ndarray]:
    """Reads a checkpoint file into {key: float32/int numpy array}.

    `.npz` files are read with numpy; anything else with `torch.load(weights_only=True)`, unwrapping
    Lightning / DeiT style {"state_dict": ...} or {"model": ...} containers.

    Args:
      path: checkpoint file.
      prefix: keep only keys starting with it and strip it (e.g. "net." for a Lightning module
        that wraps the network); the number of other keys is logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            raw = {k: data[k] for k in data.files}
    else:
        torch = _import_torch()
        obj = torch.load(path, map_location="cpu", weights_only=True)
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
    if prefix:
        selected = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if not selected:
            raise ValueError(f"{path}: no key starts with prefix {prefix!r}; keys: {sorted(raw)[:10]}")
        logging.info("%s: kept %d keys under %r, skipped %d others", path, len(selected), prefix,
                     len(raw) - len(selected))
        raw = selected
    return raw


def convert_checkpoint(arch: str, checkpoint: str | Path, out: str | Path, *,
                       n_classes: int | None = None, variant: str | None = None,
                       key_map: KeyMap | None = None, prefix: str = "",
                       model_kwargs: Mapping[str, Any] | None = None, seed: int = 0) -> nnx.Module:
    """Converts a foreign checkpoint into the registered model `arch` and saves it to `out`.

    Args:
      arch: MODELS registry name.
      checkpoint: torch checkpoint or .npz file.
      out: new Orbax checkpoint directory.
      n_classes: classes of the converted model; when the checkpoint's classifier has another
        shape, the classifier is re-initialised (head replacement) and all other weights load.
      variant: the model's variant (PaSST: which released layout).
      key_map: defaults to the one registered for `arch`, else the plain torch naming rules.
      prefix: see `load_state_dict`.
      model_kwargs: further config overrides of the model.
      seed: initialisation seed (for a replaced head).

    Returns:
      The converted model.
    """
    kwargs = dict(model_kwargs or {})
    if variant is not None:
        kwargs["variant"] = variant
    if n_classes is not None:
        kwargs["n_classes"] = n_classes
    if key_map is None:
        key_map = KEY_MAPS.get(arch) if arch in KEY_MAPS else KeyMap()
    state_dict = load_state_dict(checkpoint, prefix=prefix)
    model = MODELS.get(arch)(rngs=nnx.Rngs(seed), **kwargs)
    replace_head = n_classes is not None and head_mismatch(map_state_dict(state_dict, key_map),
                                                           model, key_map)
    if replace_head:
        logging.info("checkpoint classifier differs from n_classes=%d: re-initialising the head",
                     n_classes)
    convert_state_dict(model, state_dict, key_map, replace_head=replace_head)
    save_model(out, model, name=arch, options=kwargs, converted_from=str(Path(checkpoint).absolute()),
               replaced_head=replace_head)
    return model
