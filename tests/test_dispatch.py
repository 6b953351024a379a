"""The training split on the device (asc_jax.train.device_data) and k steps per dispatch
(asc_jax.train.dispatch), against the host-side reference and against k single steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asc_jax.audio import augment
from asc_jax.audio.frontends import logmel
from asc_jax.train import device_data, dispatch, steps
from asc_jax.train.state import create_train_state
from tests.test_steps import MEL, _tiny_model

N_SAMPLES = 15 * MEL.hop_length  # MEL's 16 frames
SR = 32000
ROLL = augment.RollConfig()
KEY = jax.random.key(7)


def _split(n=12, views=0, seed=0):
    rng = np.random.default_rng(seed)
    audio = (rng.normal(size=(n, N_SAMPLES)) * rng.uniform(0.01, 1.5, size=(n, 1))).astype(np.float32)
    q, scale = device_data.quantize_int16(audio)
    extras = {}
    if views:
        # Every stored value names its (clip, view), so the picks can be traced back.
        clip, view = np.meshgrid(np.arange(n), np.arange(views), indexing="ij")
        code = (100 * clip + view).astype(np.float32)
        extras = {"teacher_logits": np.broadcast_to(code[:, :, None, None], (n, views, 2, 10)).copy(),
                  "aug": {"roll": {"shift": (code - 500).astype(np.int32)}}}
    return device_data.DeviceSplit(q, scale, np.arange(n, dtype=np.int32) % 10, extras), audio


def test_int16_quantisation_is_within_half_a_step_of_each_clips_peak():
    _, audio = _split()
    audio[3] = 0.0  # a silent clip stays silent (no division by a zero peak)
    q, scale = device_data.quantize_int16(audio)
    back = q.astype(np.float32) * scale[:, None]
    assert q.dtype == np.int16 and np.all(back[3] == 0)
    err = np.abs(back - audio).max(axis=1)
    # Half an int16 step, plus float32 rounding of the division (~32767 * 2^-24 of a step).
    assert np.all(err <= 0.501 * scale), (err / scale).max()
    # Nothing clips: each clip's peak lands on +-32767.
    assert np.all(np.abs(q[np.arange(len(q)) != 3]).max(axis=1) == device_data.INT16_MAX)


def test_each_epoch_is_a_permutation_and_the_batch_is_a_pure_function_of_the_step():
    split, audio = _split(n=12)
    at = jax.jit(lambda s, step: device_data.batch_at(s, step, key=KEY, batch_size=4, roll=ROLL, sr=SR))
    epochs = []
    for epoch in range(2):
        batches = [at(split, jnp.int32(3 * epoch + i)) for i in range(3)]  # 12 // 4 = 3 steps an epoch
        index = np.concatenate([np.asarray(b["index"]) for b in batches])
        assert sorted(index) == list(range(12)), index
        epochs.append(index)
        for b in batches:
            idx, shift = np.asarray(b["index"]), np.asarray(b["roll"])
            assert np.all(np.abs(shift) <= ROLL.max_shift(SR)) and len(set(shift)) > 1
            np.testing.assert_array_equal(b["label"], split.label[idx])
            # The rolled clip is the host's np.roll of the stored clip, to the int16 step.
            want = np.stack([np.roll(audio[i], s) for i, s in zip(idx, shift)])
            tol = 0.501 * split.scale[idx, None]
            assert np.all(np.abs(np.asarray(b["audio"]) - want) <= tol)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order every epoch
    again = at(split, jnp.int32(4))
    jax.tree.map(np.testing.assert_array_equal, again, at(split, jnp.int32(4)))


def test_a_teacher_store_view_is_picked_per_clip_with_its_own_roll():
    split, audio = _split(n=12, views=5)
    batch = jax.jit(lambda s: device_data.batch_at(s, jnp.int32(1), key=KEY, batch_size=6, roll=ROLL, sr=SR))(split)
    idx = np.asarray(batch["index"])
    code = np.asarray(batch["teacher_logits"])[:, 0, 0]
    clip, view = np.divmod(code.astype(int), 100)
    np.testing.assert_array_equal(clip, idx)
    assert len(set(view)) > 1 and view.min() >= 0 and view.max() < 5
    # The roll is the same view's stored shift, not a fresh draw (the student hears the teacher's input).
    np.testing.assert_array_equal(batch["roll"], code.astype(np.int32) - 500)
    np.testing.assert_array_equal(batch["aug"]["roll"]["shift"], batch["roll"])
    want = np.stack([np.roll(audio[i], s) for i, s in zip(idx, np.asarray(batch["roll"]))])
    assert np.abs(np.asarray(batch["audio"]) - want).max() <= 0.501 * split.scale.max()


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture(scope="module")
def step_setup():
    model = _tiny_model()
    # SGD: Adam's m / sqrt(v) turns float-rounding noise in near-zero gradients into full-size
    # updates, so two equal computations in a different fusion would differ at 1e-3 after a few steps.
    tx = optax.sgd(0.05)
    graphdef, state = create_train_state(model, tx)
    # Frequency mask and Freq-MixStyle on: their per-step keys must follow the scanned step too.
    step_fn = steps.train_step_fn(graphdef, tx, logmel(MEL), augment.AugmentConfig(roll=None),
                                  steps.classification_loss, jax.random.key(3))
    return step_fn, state


def _assert_same_run(a, b):
    (state_a, loss_a), (state_b, loss_b) = a, b
    assert int(state_a.step) == int(state_b.step)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 (state_a.params, state_a.batch_stats), (state_b.params, state_b.batch_stats))


@pytest.mark.slow
def test_k_on_device_steps_in_one_dispatch_equal_k_single_steps(step_setup):
    step_fn, state0 = step_setup
    split, _ = _split(n=12)
    run = dispatch.on_device(step_fn, key=KEY, batch_size=4, roll=ROLL, sr=SR)
    scanned, metrics = run(_copy(state0), split, 5)  # crosses an epoch boundary (3 steps/epoch)
    assert metrics["loss"].shape == (5,)

    single = jax.jit(step_fn)
    state, losses = _copy(state0), []
    for i in range(5):
        batch = device_data.batch_at(split, jnp.int32(i), key=KEY, batch_size=4, roll=ROLL, sr=SR)
        state, m = single(state, batch)
        losses.append(float(m["loss"]))
    _assert_same_run((scanned, np.asarray(metrics["loss"])), (state, np.array(losses)))
    assert losses[0] != losses[1]  # the steps really differ (data and parameters move)


@pytest.mark.slow
def test_k_host_batches_in_one_dispatch_equal_k_single_steps(step_setup):
    step_fn, state0 = step_setup
    rng = np.random.default_rng(1)
    batches = [{"audio": (rng.normal(size=(4, N_SAMPLES)) * 0.3).astype(np.float32),
                "label": rng.integers(0, 10, 4).astype(np.int32)} for _ in range(3)]
    run = dispatch.host_batches(step_fn)
    scanned, metrics = run(_copy(state0), dispatch.stack(batches), 3)
    single = jax.jit(step_fn)
    state, losses = _copy(state0), []
    for b in batches:
        state, m = single(state, b)
        losses.append(float(m["loss"]))
    _assert_same_run((scanned, np.asarray(metrics["loss"])), (state, np.array(losses)))
    per_step = dispatch.unstack(jax.device_get(metrics))
    assert len(per_step) == 3 and float(per_step[2]["loss"]) == pytest.approx(losses[2], rel=1e-5)


def test_what_the_device_split_cannot_do_is_refused_up_front():
    from asc_jax.config import Config, OptimConfig

    config = Config(augment=augment.AugmentConfig(dir=augment.DIRConfig(folder="irs")))
    with pytest.raises(ValueError, match=r"augment\.dir"):
        device_data.check_supported(config)
    device_data.check_supported(Config())  # the default augmentation is fine
    with pytest.raises(ValueError, match="steps_per_dispatch must be >= 1"):
        OptimConfig(steps_per_dispatch=0)
    with pytest.raises(ValueError, match="compute_dtype must be"):
        OptimConfig(compute_dtype="float16")


def test_passt_under_the_generic_bfloat16_switch_is_refused(tmp_path):
    """PaSST casts its blocks back to its own model.options.compute_dtype, so optim.compute_dtype
    would silently do nothing; the run is refused before it records a config."""
    from asc_jax.config import Config, ModelConfig, OptimConfig
    from asc_jax.train import train_and_evaluate

    config = Config(model=ModelConfig(name="passt"), optim=OptimConfig(compute_dtype="bfloat16"))
    with pytest.raises(ValueError, match="model.options.compute_dtype='bfloat16'"):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_bfloat16_kernel_gradients_are_summed_in_float32():
    """The custom VJPs' chunked kernel-gradient sums run in float32 under bfloat16 inputs: their
    bfloat16 result equals the float32 gradient of the same bfloat16 values, rounded once."""
    from asc_jax.models import layers

    rng = np.random.default_rng(0)
    # 65,536 rows: 8 chunks of the sum (measured: summed in bfloat16, up to 14 % off per element).
    x = jnp.asarray(rng.normal(size=(256, 16, 16, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(8, 8)), jnp.bfloat16)
    dy = jnp.asarray(rng.normal(size=(256, 16, 16, 8)), jnp.bfloat16)
    _, vjp = jax.vjp(layers.pointwise_matmul, x, kernel)
    dk = vjp(dy)[1]
    want = np.einsum("bhwc,bhwo->co", np.asarray(x, np.float32), np.asarray(dy, np.float32))
    assert dk.dtype == jnp.bfloat16
    # One bfloat16 rounding of the float32 sum: at most 2^-8 relative per element.
    assert np.all(np.abs(np.asarray(dk, np.float32) - want) <= 2 ** -8 * np.abs(want) * 1.001)
