"""`train_and_evaluate`: the whole run behind `python train.py --config ...`.

Data (grain on the host, or the split kept on the device: `data.on_device`) -> jitted step, one
or k per dispatch (log-mel, augmentation, model, optimiser; device) -> logs,
periodic evaluation, checkpoints (resume is automatic from the workdir) -> at the end the fused
deploy model is written, evaluated and its complexity reported.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from asc_jax import complexity, evaluate, inference, parallel
from asc_jax.audio import frontends
from asc_jax.checkpoint import TrainCheckpoints, read_spec, restore_weights, save_model
from asc_jax.config import Config, config_diff, to_dict
from asc_jax.data import pipeline, sources, tau
from asc_jax.models import has_deploy_form, with_default_lowering
from asc_jax.reparam import fuse
from asc_jax.train import device_data, dispatch, steps
from asc_jax.train.logging import MetricWriter, format_metrics
from asc_jax.train.state import TrainState, create_train_state

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 64


@dataclasses.dataclass
class Data:
    root: Path
    train_clips: list[tau.Clip]
    eval_clips: list[tau.Clip]
    train_source: sources.ClipSource
    eval_source: sources.ClipSource


def prepare_data(config: Config) -> Data:
    """Resolves the dataset (generating the embedded one if asked) and opens both splits, every
    clip checked up front (`sources.load_split_source`: under data.on_error="skip" every bad
    clip is left out and reported once per split, as a count plus the first names)."""
    root = sources.dataset_root(config.data.root, generate=config.data.generate,
                                 synthetic_params=config.data.synthetic)
    frontend = frontends.of_config(config)
    train, evaluation = (
        sources.load_split_source(root, split, sr=frontend.sample_rate, resampler=frontend.resampler,
                                   cache=config.data.cache_audio, on_error=config.data.on_error)
        for split in (config.data.train_split, config.data.eval_split))
    train_source = train.source
    if config.data.devices:
        train_source = _keep_devices(train_source, config.data.devices, config.data.train_split)
    return Data(root, list(train_source.clips), evaluation.clips, train_source, evaluation.source)


def _keep_devices(source: sources.ClipSource, devices: Sequence[str], split: str) -> sources.ClipSource:
    """The clips of `source` recorded by one of `devices` (data.devices), in the same order.

    Raises:
      ValueError: naming every requested device that has no clip in the split (a typo, or an
        unseen device such as s4 asked of a training split).
    """
    counts = {d: sum(c.device == d for c in source.clips) for d in devices}
    missing = [d for d, n in counts.items() if n == 0]
    if missing:
        present = sorted({c.device for c in source.clips})
        raise ValueError(f"data.devices: no clip of device {', '.join(map(repr, missing))} in training split "
                         f"{split!r} (its devices: {', '.join(present)})")
    kept = [i for i, c in enumerate(source.clips) if c.device in counts]
    log.info("data.devices %s: training on %d of the %d clips of split %s (%s)", ",".join(devices),
             len(kept), len(source), split, ", ".join(f"{d} {n}" for d, n in counts.items()))
    # A new source holding only the kept clips' audio: only they are ever read again.
    return source.subset(kept)


def predict(eval_fn, state, source: sources.ClipSource, mesh=None) -> np.ndarray:
    """Logits (N, C) for every clip of `source`, in order (`inference.predict`).

    Args:
      eval_fn: jitted `inference.forward` of the model.
      state: its (params, batch_stats).
      mesh: the run's mesh, to shard the batches over; None for host copies of `state`.
    """
    return inference.predict(functools.partial(eval_fn, state), source, EVAL_BATCH_SIZE, mesh=mesh)


def clip_metrics(logits: np.ndarray, clips: Sequence[tau.Clip]) -> dict:
    return evaluate.compute_metrics(logits, np.array([c.label for c in clips]), [c.device for c in clips])


def check_resumable(workdir: str | Path, config: Config) -> None:
    """Refuses to go on with a run in `workdir` whose stored config.json differs from `config`
    (`config.config_diff`: fields added to the code since, at their defaults, and
    config.RESUMABLE_FIELDS do not count). A workdir without config.json is a new run.

    Raises:
      ValueError: naming the differing fields, or config.json if it is not valid JSON.
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to start the run afresh") from None
    diff = config_diff(stored, config)
    if diff:
        raise ValueError(f"{workdir} holds a run with a different config (fields {diff}); "
                         "use another workdir (or delete this one) or the original config")


def record_config(workdir: str | Path, config: Config) -> None:
    """Records the run's config (what `check_resumable` compares with), once it has been validated
    and its model built: a command that fails on a typo leaves no config behind to refuse the
    corrected command. One writer (the primary process) when several hosts share the workdir."""
    if parallel.is_primary():
        (Path(workdir) / "config.json").write_text(json.dumps(to_dict(config), indent=2))


def _teacher_extras(config: Config, data: Data):
    if not config.kd.store:
        return None
    from asc_jax.distill import StoreExtras
    # Refuses a store computed under other augmentations than config.augment (Freq-MixStyle
    # aside): the student must see exactly what the teachers saw.
    return StoreExtras(config.kd.store, [c.filename for c in data.train_clips], tau.CLASSES,
                       teachers=config.kd.teachers, augment=config.augment,
                       sample_rate=frontends.of_config(config).sample_rate)


def _check_init_frontend(init_from: str | Path, frontend: frontends.Frontend) -> None:
    """Refuses initial weights trained on another frontend than the run's (a PaSST checkpoint
    under the student log-mel, or the other way round): they would start from features they
    never saw. A saved model that records no frontend (a pruning phase's sliced init before it
    did) is not compared."""
    recorded = frontends.recorded_frontend(read_spec(init_from), init_from)
    if recorded is None:
        return
    saved = recorded.describe()
    if saved != frontend.describe():
        raise ValueError(f"model.init_from {init_from} was trained on frontend {saved}, this run uses "
                         f"{frontend.describe()}; set the config's frontend (and its settings) to the "
                         "checkpoint's, or initialise from a model trained on this frontend")


def _explain_out_of_memory(train_step: Callable, config: Config) -> Callable:
    """`train_step` whose device out-of-memory error says which settings reduce the memory."""

    def step(*args):
        try:
            return train_step(*args)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            options = [f"optim.batch_size (now {config.optim.batch_size}; per device with "
                       "parallel data parallelism)"]
            if config.data.on_device:
                options.append("data.on_device=False (the split is held on every device)")
            if config.optim.steps_per_dispatch > 1:
                options.append(f"optim.steps_per_dispatch (now {config.optim.steps_per_dispatch})")
            if config.model.name != "passt" and config.optim.compute_dtype == "float32":
                options.append("optim.compute_dtype='bfloat16'")
            if config.model.name == "passt":
                options += ["model.options.remat=True (recompute block activations)",
                            "model.options.compute_dtype='bfloat16'"]
            raise MemoryError(f"the train step of {config.model.name} does not fit in device memory; "
                              f"reduce it with {', '.join(options)}. XLA said: {str(e)[:300]}") from e

    return step


def _check_switches(config: Config) -> None:
    """Refuses combinations of the speed switches (data.on_device, optim.compute_dtype) that
    cannot do what they say."""
    if config.data.on_device:
        device_data.check_supported(config)
    if config.optim.compute_dtype != "float32" and config.model.name == "passt":
        # Its blocks cast back to model.options.compute_dtype, so the switch would do nothing.
        raise ValueError("optim.compute_dtype does not apply to PaSST, which has its own mixed precision: set "
                         "model.options.compute_dtype='bfloat16' (LayerNorms and logits stay float32) and "
                         "leave optim.compute_dtype='float32'")


def _make_dispatch(config: Config, graphdef, tx, frontend, feature_aug, key_aug, data: Data, extras,
                   steps_per_epoch: int, mesh) -> tuple[Callable, device_data.DeviceSplit | None]:
    """`advance(state, source, k) -> (state, metrics with a leading axis of k)` for the run's
    data path, and the device-resident split it reads (None: `source` is the grain iterator).

    Host data, one step per dispatch: the plain jitted step (the default). Host data, k > 1:
    k host batches stacked into one transfer and scanned. `data.on_device`: the split is put on
    the devices once and every step draws its batch there (`device_data`).
    """
    make_step = functools.partial(steps.sharded_train_step_fn, mesh) if _shard_map_step(config, mesh) \
        else steps.train_step_fn
    step_fn = make_step(graphdef, tx, frontend, feature_aug, _loss_fn(config), key_aug,
                        schedule=config.optim.schedule(steps_per_epoch), compute_dtype=config.optim.compute_dtype)
    sharding = parallel.batch_sharding(mesh)

    def constrain(batch):
        return jax.lax.with_sharding_constraint(batch, sharding)

    if config.data.on_device:
        split = device_data.load(data.train_source, extras)
        split = parallel.replicate(split, mesh)
        # Its own key: the on-device order and rolls are not the augmentations' stream.
        run = dispatch.on_device(step_fn, key=jax.random.fold_in(key_aug, 0x44415441),
                                 batch_size=config.optim.batch_size, roll=config.augment.roll,
                                 sr=frontend.sample_rate, constrain=constrain)
        return run, split
    if config.optim.steps_per_dispatch == 1:
        @functools.partial(jax.jit, donate_argnums=0)
        def single(state, batch):
            state, metrics = step_fn(state, batch)
            return state, jax.tree.map(lambda m: m[None], metrics)  # the steps axis, k = 1

        def advance(state, iterator, k):
            return single(state, parallel.put_batch(next(iterator), mesh))

        return advance, None
    scanned = dispatch.host_batches(step_fn, constrain)

    def advance(state, iterator, k):
        batches = dispatch.stack([next(iterator) for _ in range(k)])
        return scanned(state, parallel.put_batches(batches, mesh), k)

    return advance, None


def _shard_map_step(config: Config, mesh) -> bool:
    """Whether the run's train step runs per device under shard_map (parallel.step)."""
    return config.parallel.step == "shard_map" and mesh.size > 1


def _refuse_model_randomness(model) -> None:
    """The shard_map step replicates the model's RNG streams, so every device would draw the
    same dropout masks for its own rows: refused, naming the streams, rather than trained with
    masks repeated across the batch (the students here draw none; "spmd" draws globally)."""
    streams = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.RngState))]
    if streams:
        raise ValueError(f"parallel.step='shard_map': model {type(model).__name__} draws random numbers "
                         f"in training ({', '.join(sorted(streams)[:4])}), which every device would draw "
                         "alike for its rows; use parallel.step='spmd' for it")


def _loss_fn(config: Config):
    if config.kd.store:
        from asc_jax.distill import make_kd_loss
        return make_kd_loss(config.kd.lam, config.kd.tau, config.kd.scale_by_tau_sq)
    return steps.classification_loss


def _check_finite(history: list[dict], first_step: int, last_good: Callable[[], str]) -> None:
    """Raises FloatingPointError at the first non-finite loss of `history`.

    Args:
      last_good: returns where training can be taken up again (`TrainCheckpoints.last_good`);
        called only on failure, since it waits for pending saves.
    """
    for offset, metrics in enumerate(history):
        if not math.isfinite(float(metrics["loss"])):
            raise FloatingPointError(
                f"non-finite loss {float(metrics['loss'])} at step {first_step + offset + 1}; "
                f"training stopped before saving it ({last_good()}). "
                "Lower optim.lr or enable optim.grad_clip.")


def _mean_metrics(history: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *history)


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if a checkpoint is there) and evaluates it.

    Returns:
      A summary dict: final eval metrics of the trained and the fused deploy model,
      complexity, steps.
    """
    mesh = parallel.setup(config.parallel)  # first: multi-host init precedes any device use
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_resumable(workdir, config)
    _check_switches(config)  # before config.json is written: a refused run leaves none behind
    recorded = config
    # The conv lowering is chosen once, here, for this run's backend; it reaches model.json (the
    # models' options) but not config.json, so a run may resume on another backend.
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, options=with_default_lowering(config.model.name, config.model.options)))
    key_params, key_aug = jax.random.split(jax.random.key(config.seed))
    frontend = frontends.of_config(config)

    data = prepare_data(config)
    batch_size = config.optim.batch_size
    steps_per_epoch = len(data.train_clips) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data.train_clips)} training clips cannot fill a batch of {batch_size}")
    total_steps = config.optim.epochs * steps_per_epoch
    stop_at = min(total_steps, config.max_steps) if config.max_steps > 0 else total_steps

    extras = _teacher_extras(config, data)
    dataset = pipeline.train_dataset(
        data.train_source, batch_size=parallel.per_process_batch_size(batch_size, mesh),
        seed=config.seed, sr=frontend.sample_rate, shard=(jax.process_index(), jax.process_count()),
        roll=config.augment.roll, dir=config.augment.dir,
        worker_count=config.data.worker_count, extra=extras)
    iterator = iter(dataset)

    # The default stream seeds the models' own randomness in training (PaSST's patchout); its
    # counters live in the model state, so they are checkpointed and resume exactly.
    model = config.model.build(nnx.Rngs(params=key_params, default=jax.random.fold_in(key_params, 1)))
    if config.model.init_from:
        _check_init_frontend(config.model.init_from, frontend)
        restore_weights(config.model.init_from, model)
    if _shard_map_step(config, mesh):
        _refuse_model_randomness(model)
    record_config(workdir, recorded)
    tx = config.optim.build(steps_per_epoch)
    graphdef, state = create_train_state(model, tx)
    # The device IR and the roll ran on the host; the mask value is moved into the frontend's units.
    feature_aug = frontends.feature_augment(dataclasses.replace(config.augment, roll=None, dir=None), frontend)
    advance, device_split = _explain_out_of_memory(_make_dispatch, config)(
        config, graphdef, tx, frontend, feature_aug, key_aug, data, extras, steps_per_epoch, mesh)
    advance = _explain_out_of_memory(advance, config)
    # Frontend + model, compiled once for all evaluations (the state is an argument).
    eval_fn = inference.jitted_forward(graphdef, frontend.features)

    with TrainCheckpoints(workdir / "checkpoints", keep_best=config.keep_best) as ckpts:
        if ckpts.latest_step() is not None:
            state = ckpts.restore_latest(state, iterator)
            log.info("resumed from step %d in %s", int(state.step), workdir)
        state = parallel.put_state(state, mesh)
        step = int(state.step)
        writer = MetricWriter(workdir, start_step=step, enabled=parallel.is_primary())
        history: list[dict] = []
        # Redraw at most every 5 s when logging to a file (CI, nohup) rather than a terminal.
        progress = tqdm(total=stop_at, initial=step, desc="train", unit="step", dynamic_ncols=True,
                        mininterval=0.1 if sys.stderr.isatty() else 5.0, disable=not parallel.is_primary())
        while step < stop_at:
            # A dispatch never crosses an epoch's end (evaluation, checkpoints) or stop_at, and
            # dispatches sit on a fixed grid of k steps from each epoch's start, so a run resumed
            # at any step runs the same programs on the same steps as the uninterrupted run.
            position, k = step % steps_per_epoch, config.optim.steps_per_dispatch
            k = min(k - position % k, steps_per_epoch - position, stop_at - step)
            state, metrics = advance(state, device_split if device_split is not None else iterator, k)
            history.append(metrics)
            logged_before = step // config.log_every_steps
            step += k
            progress.update(k)
            epoch_end = step % steps_per_epoch == 0
            if step // config.log_every_steps > logged_before or epoch_end or step == stop_at:
                host = [m for chunk in parallel.to_host(history) for m in dispatch.unstack(chunk)]
                _check_finite(host, step - len(host), ckpts.last_good)
                flat = writer.write("train", step, _mean_metrics(host))
                progress.set_postfix_str(format_metrics(flat, ("loss", "accuracy", "lr")))
                history = []
            epoch = step // steps_per_epoch
            if epoch_end and (epoch % config.eval_every_epochs == 0 or step == total_steps):
                metrics = clip_metrics(predict(eval_fn, (state.params, state.batch_stats), data.eval_source, mesh),
                                       data.eval_clips)
                writer.write("eval", step, {k: metrics[k] for k in ("accuracy", "macro_accuracy")}
                             | {"device": metrics["device_group_accuracy"]})
                if parallel.is_primary():
                    progress.write(f"epoch {epoch} step {step}: eval accuracy {metrics['accuracy']:.4f} "
                                   f"macro {metrics['macro_accuracy']:.4f}")
                ckpts.save_best(step, state, metrics)
            if epoch_end or step == stop_at:
                ckpts.save_latest(step, state, iterator)
        progress.close()
        ckpts.wait()
        writer.close()
    if step < total_steps:
        log.info("stopped at step %d of %d (max_steps); rerun the same command to resume", step, total_steps)
        return {"step": step, "total_steps": total_steps, "finished": False}
    return finalize(config, workdir, graphdef, state, data, eval_fn)


def finalize(config: Config, workdir: Path, graphdef: nnx.GraphDef, state: TrainState, data: Data,
             eval_fn) -> dict[str, Any]:
    """Evaluates the final model, fuses it into the deploy model, checks they agree, saves both
    reports, both models (`model/` training form, `deploy/` fused) and the complexity report.
    A model without a fused form (PaSST) deploys as trained: its model/ is the only one saved,
    and the "deploy" reports are its own."""
    out = workdir / "eval"
    primary = parallel.is_primary()  # every process computes; process 0 alone writes
    # Host copies on every process (a collective in a multi-host run): what follows (evaluation,
    # fusion, saving) is local work on the same numbers everywhere.
    params, batch_stats = parallel.to_host((state.params, state.batch_stats))
    state = state.replace(params=params, batch_stats=batch_stats)
    logits = predict(eval_fn, (state.params, state.batch_stats), data.eval_source)
    metrics = clip_metrics(logits, data.eval_clips)
    if primary:
        evaluate.save_report(metrics, out, prefix="final")
        print(evaluate.summary_table(metrics))

    model = nnx.merge(graphdef, state.params, state.batch_stats)
    frontend = frontends.of_config(config)
    fused = has_deploy_form(config.model.name)
    if fused:
        deploy = fuse(model, lambda: config.model.build(nnx.Rngs(0), deploy=True))
        deploy_graph, deploy_state = nnx.split(deploy)
        deploy_eval = inference.jitted_forward(deploy_graph, frontend.features)
        deploy_logits = predict(deploy_eval, deploy_state, data.eval_source)
        deploy_metrics = clip_metrics(deploy_logits, data.eval_clips)
        max_diff = float(np.abs(deploy_logits - logits).max())
        if max_diff > 1e-3 * max(1.0, float(np.abs(logits).max())):
            raise RuntimeError(f"fused deploy model disagrees with the trained model (max |logit diff| {max_diff})")
    else:  # no fused form (PaSST): the model deploys as trained, saved once, to model/
        deploy, deploy_metrics, max_diff = model, metrics, 0.0
    if primary:
        evaluate.save_report(deploy_metrics, out, prefix="deploy")

    wave = jax.ShapeDtypeStruct((1, data.eval_source.num_samples), np.float32)
    input_shape = jax.eval_shape(frontend.features, wave).shape  # (1, n_mels, n_frames)
    # DCASE reports the BN form (torchinfo on the PyTorch model); the fused form has biases instead.
    deploy_complexity = complexity.report(deploy, input_shape)
    reports = {"train_form": complexity.report(model, input_shape).as_dict(),
               "deploy_form": deploy_complexity.as_dict()}
    summary = {"step": int(state.step), "finished": True, "eval": metrics, "deploy_eval": deploy_metrics,
               "deploy_max_logit_diff": max_diff, "complexity": reports}
    if primary:
        (workdir / "complexity.json").write_text(json.dumps(reports, indent=2))
        print("complexity (deploy model):\n" + deploy_complexity.table())

        # The training form too: pruning rounds and finetuning start from it.
        save_model(workdir / "model", model, name=config.model.name, options=config.model.options,
                   frontend=frontend.describe(), class_names=list(tau.CLASSES))
        if fused:
            save_model(workdir / "deploy", deploy, name=config.model.name, options=config.model.options,
                       deploy=True, frontend=frontend.describe(), class_names=list(tau.CLASSES),
                       eval={k: deploy_metrics[k] for k in ("accuracy", "macro_accuracy")})
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    # The others wait for process 0's files: a process that returned (and shut jax.distributed
    # down) long before process 0 finished writing would fail the shutdown barrier's deadline.
    parallel.barrier("finalize")
    return summary
