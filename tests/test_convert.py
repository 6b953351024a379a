"""Strict merge, key maps, head replacement, the CLI and the Orbax round trip (no torch needed)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import convert_weights
from asc_jax.checkpoint import load_model, read_spec, restore_weights, save_model
from asc_jax.convert import (KEY_MAPS, KeyMap, convert_state_dict, flat_weights, load_state_dict,
                             map_state_dict, merge_params)
from asc_jax.models.passt import passt

TINY = dict(depth=1, embed_dim=32, num_heads=4, n_frames=200)


@nnx.jit(static_argnames="train")
def _forward(model, x, train=False):
    return model(x, train=train)


def _inited():
    return {"conv/kernel": np.zeros((3, 3, 1, 4), np.float32), "conv/bias": np.zeros(4, np.float32),
            "fc/kernel": np.zeros((4, 2), np.float32)}


def _loaded():
    return {k: np.ones(v.shape, np.float64) for k, v in _inited().items()}


def test_merge_params_loads_everything_and_casts_dtype():
    merged = merge_params(_loaded(), _inited())
    assert set(merged) == set(_inited())
    for k, v in merged.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, 1.0)


def test_merge_params_missing_key():
    loaded = _loaded()
    del loaded["conv/bias"]
    with pytest.raises(ValueError, match=r"1 key\(s\) missing from the checkpoint:\n  conv/bias"):
        merge_params(loaded, _inited())


def test_merge_params_extra_key():
    loaded = {**_loaded(), "fc/bias": np.ones(2)}
    with pytest.raises(ValueError, match=r"1 key\(s\) not in the model:\n  fc/bias"):
        merge_params(loaded, _inited())


def test_merge_params_wrong_shape():
    loaded = {**_loaded(), "fc/kernel": np.ones((2, 4))}
    with pytest.raises(ValueError, match=r"fc/kernel: checkpoint \(2, 4\) vs model \(4, 2\)"):
        merge_params(loaded, _inited())


def test_merge_params_reports_all_problems_at_once():
    loaded = {"conv/kernel": np.ones((1, 1, 1, 4)), "fc/kernel": np.ones((4, 2)), "extra": np.ones(1)}
    with pytest.raises(ValueError) as err:
        merge_params(loaded, _inited())
    message = str(err.value)
    assert "missing from the checkpoint:\n  conv/bias" in message
    assert "not in the model:\n  extra" in message
    assert "conv/kernel: checkpoint (1, 1, 1, 4) vs model (3, 3, 1, 4)" in message


def test_merge_params_dont_load_keeps_init_and_skips_checkpoint_value():
    loaded = {**_loaded(), "fc/kernel": np.ones((4, 7))}  # a 7-class head for a 2-class model
    merged = merge_params(loaded, _inited(), dont_load=(r"fc/.*",))
    np.testing.assert_array_equal(merged["fc/kernel"], 0.0)
    np.testing.assert_array_equal(merged["conv/kernel"], 1.0)


def test_map_state_dict_follows_torch_conventions():
    rng = np.random.default_rng(0)
    sd = {"features.0.weight": rng.normal(size=(8, 1, 3, 5)),  # conv OIHW
          "features.1.weight": rng.normal(size=(8,)), "features.1.bias": rng.normal(size=(8,)),
          "features.1.running_mean": rng.normal(size=(8,)), "features.1.running_var": rng.random(8),
          "features.1.num_batches_tracked": np.array(7),
          "classifier.weight": rng.normal(size=(10, 8)), "aux_head.weight": rng.normal(size=(2, 8))}
    key_map = KeyMap(renames=((r"^features\.0\.", "stem.conv."), (r"^features\.1\.", "stem.bn.")),
                     ignore=(r"aux_head\..*",))
    out = map_state_dict(sd, key_map)
    assert sorted(out) == ["classifier/kernel", "stem/bn/bias", "stem/bn/mean", "stem/bn/scale",
                           "stem/bn/var", "stem/conv/kernel"]
    np.testing.assert_array_equal(out["stem/conv/kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(out["classifier/kernel"], sd["classifier.weight"].T)
    np.testing.assert_array_equal(out["stem/bn/var"], sd["features.1.running_var"])


def test_map_state_dict_rejects_collisions():
    with pytest.raises(ValueError, match="both map to 'a/kernel'"):
        map_state_dict({"a.weight": np.ones((2, 2)), "b.weight": np.ones((2, 2))},
                       KeyMap(renames=((r"^b\.", "a."),)))


def test_renumber_ranks_named_children_within_their_parent():
    # Blocks numbered across stages (b1..b3 in s1, b4 in s2), as CPJKU's CP-Mobile names them.
    sd = {f"stages.s{s}.b{b}.conv.weight": np.ones((2, 2)) for s, b in ((1, 1), (1, 2), (1, 3), (2, 4))}
    key_map = KeyMap(renumber=(r"^stages\.s\d+\.b(\d+)\.", r"^stages\.s(\d+)\."),
                     renames=((r"^stages\.s(\d+)\.b(\d+)\.", r"stages.\1.\2."),))
    assert sorted(map_state_dict(sd, key_map)) == [
        "stages/0/0/conv/kernel", "stages/0/1/conv/kernel", "stages/0/2/conv/kernel",
        "stages/1/0/conv/kernel"]
    with pytest.raises(ValueError, match=r"captured 'b1' in 'stages.s1.b1.conv.weight', not a number"):
        map_state_dict(sd, KeyMap(renumber=(r"^stages\.s1\.(b\d+)\.",)))
    with pytest.raises(ValueError, match="exactly one group"):
        map_state_dict(sd, KeyMap(renumber=(r"^stages\.s(\d+)\.b(\d+)",)))


def test_key_map_from_json(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"renames": [["^net\\.", ""]], "head": ["fc/.*"],
                                "renumber": ["^s(\\d+)\\."]}))
    assert KeyMap.from_json(path) == KeyMap(renames=((r"^net\.", ""),), head=("fc/.*",),
                                            renumber=(r"^s(\d+)\.",))
    path.write_text(json.dumps({"renamez": []}))
    with pytest.raises(ValueError, match="renamez"):
        KeyMap.from_json(path)


def _torch_layout(model) -> dict[str, np.ndarray]:
    """A PaSST state dict as hear21passt would save it (the inverse of the "passt" key map)."""
    modules = {"patch_embed": ["patch_embed", "proj"], "head_norm": ["head", "0"], "head": ["head", "1"]}
    out = {}
    for path, value in flat_weights(model).items():
        value = np.asarray(value)
        *module, leaf = path.split("/")
        if leaf == "kernel":
            leaf, value = "weight", value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
        elif leaf == "scale":
            leaf = "weight"
        elif leaf.endswith("_new_pos_embed") and value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        if module:
            module = modules.get(module[0], module[:1]) + module[1:]
        out[".".join([*module, leaf])] = value
    n_classes, dim = out["head.1.weight"].shape
    out["head_dist.weight"], out["head_dist.bias"] = np.ones((n_classes, dim)), np.ones(n_classes)
    return out


def _assert_same_weights(a, b, skip=()):
    fa, fb = flat_weights(a), flat_weights(b)
    assert set(fa) == set(fb)
    for k in fa:
        if k not in skip:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_passt_key_map_round_trip_and_head_replacement():
    source = passt(rngs=nnx.Rngs(1), n_classes=5, **TINY)
    sd = _torch_layout(source)
    assert sd["freq_new_pos_embed"].shape == (1, 32, 12, 1)  # hear21passt's (1, E, F, 1)

    same = convert_state_dict(passt(rngs=nnx.Rngs(2), n_classes=5, **TINY), sd, KEY_MAPS.get("passt"))
    _assert_same_weights(same, source)

    with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(32, 5\) vs model \(32, 3\)"):
        convert_state_dict(passt(rngs=nnx.Rngs(2), n_classes=3, **TINY), sd, KEY_MAPS.get("passt"))

    fresh = passt(rngs=nnx.Rngs(2), n_classes=3, **TINY)
    replaced = convert_state_dict(passt(rngs=nnx.Rngs(2), n_classes=3, **TINY), sd,
                                  KEY_MAPS.get("passt"), replace_head=True)
    new, old, init = flat_weights(replaced), flat_weights(source), flat_weights(fresh)
    for k in new:
        expected = init[k] if k in ("head/kernel", "head/bias") else old[k]
        np.testing.assert_array_equal(new[k], expected, err_msg=k)


def test_orbax_round_trip_into_abstract_model(tmp_path):
    kwargs = dict(n_classes=4, s_patchout_t=2, **TINY)
    model = passt(rngs=nnx.Rngs(3), **kwargs)
    out = save_model(tmp_path / "ckpt", model, name="passt", options=kwargs)
    assert read_spec(out) == {"model": {"name": "passt", "options": kwargs, "deploy": False}}

    abstract = nnx.eval_shape(lambda: passt(rngs=nnx.Rngs(0), **kwargs))
    _assert_same_weights(restore_weights(out, abstract), model)

    loaded = load_model(out)[0]
    _assert_same_weights(loaded, model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 128, 120)), jnp.float32)
    np.testing.assert_array_equal(_forward(loaded, x)[0], _forward(model, x)[0])
    tokens = _forward(loaded, x, train=True)[1]["tokens"]  # the patchout RNG stream is live
    assert tokens.shape[1] == 2 + 12 * (11 - 2) and np.isfinite(tokens).all()


def test_restore_weights_rejects_a_different_model(tmp_path):
    out = save_model(tmp_path / "ckpt", passt(rngs=nnx.Rngs(0), n_classes=4, **TINY), name="passt",
                       options={})
    with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(32, 4\) vs model \(32, 3\)"):
        restore_weights(out, nnx.eval_shape(lambda: passt(rngs=nnx.Rngs(0), n_classes=3, **TINY)))
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)[0]


def test_cli_converts_npz_with_head_replacement(tmp_path):
    source = passt(rngs=nnx.Rngs(1), n_classes=5, **TINY)
    ckpt = tmp_path / "teacher.npz"
    np.savez(ckpt, **{f"net.{k}": v for k, v in _torch_layout(source).items()})
    out = tmp_path / "converted"
    convert_weights.main(["--arch", "passt", "--torch-ckpt", str(ckpt), "--out", str(out),
                          "--num-classes", "3", "--prefix", "net.", "--model-kwargs", json.dumps(TINY)])
    spec = read_spec(out)
    assert spec["model"]["options"] == {**TINY, "n_classes": 3} and spec["replaced_head"]
    converted = load_model(out)[0]
    assert converted.head.kernel.shape == (32, 3)
    _assert_same_weights(converted, passt(rngs=nnx.Rngs(1), n_classes=5, **TINY),
                         skip=("head/kernel", "head/bias"))


def test_load_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state_dict(tmp_path / "missing.pt")
    np.savez(tmp_path / "w.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="prefix 'net.'"):
        load_state_dict(tmp_path / "w.npz", prefix="net.")


def test_torch_checkpoint_file(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"layer.weight": torch.ones(2, 3, dtype=torch.float16), "bn.num_batches_tracked": torch.tensor(3)}
    torch.save({"state_dict": sd, "epoch": 4}, tmp_path / "lightning.ckpt")
    loaded = load_state_dict(tmp_path / "lightning.ckpt")
    assert loaded["layer.weight"].dtype == np.float32 and loaded["layer.weight"].shape == (2, 3)
    assert loaded["bn.num_batches_tracked"] == 3
    torch.save({"w": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="'w' is a list"):
        load_state_dict(tmp_path / "bad.pt")
