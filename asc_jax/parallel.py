"""Data-parallel training over every device, on one host or many, with `jax.sharding`.

One mesh axis, "data". Batches are split along their leading axis over it; parameters, batch
statistics and optimiser state are replicated. The train step itself is unchanged: `jax.jit`
compiles it for the shardings of its inputs and XLA's SPMD partitioner inserts the collectives.
Because a sharded batch is still *one logical array*, every reduction over the batch (the mean
loss, hence the gradient, and BatchNorm's batch mean and variance) is computed over the global
batch, so N devices train exactly the model one device would with the same global batch (up to
float summation order; tests/test_parallel.py checks this).

Multi-host: call `initialize_distributed` before anything else touches JAX; every process then
feeds its own slice of the global batch (`per_process_batch_size`) and `put_batch` assembles the
global array with `jax.make_array_from_process_local_data`. Which clips a process reads is the
data pipeline's business (each process must read a disjoint shard).

Typical use (what `train_and_evaluate` does):

    mesh = parallel.setup(config.parallel)                  # before building anything on device
    state = parallel.put_state(state, mesh)                 # replicated
    state, metrics = train_step(state, parallel.put_batch(next(iterator), mesh))
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"


STEPS = ("spmd", "shard_map")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    num_devices: int = 1  # Devices the global batch is split over: 1 = one device, 0 = all (global).
    # How the train step is split over the devices (with num_devices != 1). "spmd": the one-device
    # step, jitted for sharded inputs; XLA's partitioner places every op, and on CPU it gathers
    # the whole batch for the FFT and the "taps" lowering's chunked gradients. "shard_map": the
    # step runs per device on its rows (`shard_step`), with the batch's couplings made global
    # (BatchNorm statistics, MixStyle partners, augmentation draws, the mean loss and gradients;
    # `steps.train_step_fn`'s axis_name). Both train as one device does, up to float order.
    step: str = "spmd"
    # XLA:CPU devices to create on this host (0 = JAX's default, one). XLA:CPU runs one op after
    # another, each on few threads, so one device keeps 2 cores ~60 % busy in the train step;
    # one device per core with `step="shard_map"` runs the shards side by side
    # (benchmarks/README.md). Only on the CPU backend, and before JAX starts it (`setup`).
    cpu_devices: int = 0
    # "host:port" of process 0 for multi-host runs; "" = $JAX_COORDINATOR_ADDRESS, else a cluster
    # JAX can detect (SLURM, Open MPI, ...) if `num_processes` > 1, else a single process.
    coordinator_address: str = ""
    num_processes: int = 0  # Processes of a multi-host run; 0 = from the cluster environment.
    process_id: int = -1  # This process's index; -1 = from the cluster environment.


def initialize_distributed(config: ParallelConfig) -> bool:
    """Starts multi-controller JAX when the config or the environment asks for it.

    Must run before any other JAX call that touches a backend (jax.devices(), array creation).

    Returns:
      True if `jax.distributed` is initialised (now or before), False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    address = config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not address and config.num_processes <= 1:
        return False
    jax.distributed.initialize(
        coordinator_address=address or None,
        num_processes=config.num_processes if config.num_processes > 0 else None,
        process_id=config.process_id if config.process_id >= 0 else None,
    )
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the "data" axis.

    Args:
      num_devices: how many devices; None or 0 = every global device. A subset is only allowed
        in a single-process run (every process must own part of a multi-host mesh).
    """
    total = jax.device_count()
    n = total if not num_devices else num_devices
    if n < 0 or n > total:
        raise ValueError(f"num_devices={num_devices}, but {total} devices exist: {jax.devices()}")
    if n != total and jax.process_count() > 1:
        raise ValueError(f"a multi-host run uses all {total} devices; got num_devices={num_devices}")
    # Auto axes: sharding propagation decides the layout of every intermediate, so the model
    # code needs no sharding annotations (jax.make_mesh defaults to Explicit axes).
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def setup(config: ParallelConfig | int | None = None) -> Mesh:
    """`initialize_distributed` (given a ParallelConfig) and `make_mesh`; logs the layout.

    Args:
      config: a ParallelConfig, or just a device count (None/0 = all devices).
    """
    if isinstance(config, ParallelConfig):
        if config.step not in STEPS:
            raise ValueError(f"parallel.step={config.step!r}; known: {STEPS}")
        if config.cpu_devices:
            set_cpu_devices(config.cpu_devices)
        initialize_distributed(config)
        num_devices = config.num_devices
    else:
        num_devices = config
    mesh = make_mesh(num_devices)
    log.info("data-parallel mesh: %d devices (%s), process %d of %d", mesh.size,
             mesh.devices.flat[0].platform, jax.process_index(), jax.process_count())
    return mesh


def set_cpu_devices(n: int) -> None:
    """Asks for `n` XLA:CPU devices on this host. JAX reads this when it starts its CPU backend:
    a backend already started with another count is an error here, not a silent mismatch."""
    from jax._src import xla_bridge  # whether a backend has started: no public API says so

    current = jax.config.jax_num_cpu_devices
    if current == n:
        return
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(f"parallel.cpu_devices={n}: JAX's backends are already running with "
                           f"jax_num_cpu_devices={current}; set it before anything touches a device "
                           "(train.py does, from the config)")
    jax.config.update("jax_num_cpu_devices", n)


def shard_step(step: Any, mesh: Mesh) -> Any:
    """`step(state, batch) -> (state, metrics)` run per device under `jax.shard_map`: the state
    replicated, every batch leaf split along its leading axis over "data", the results
    replicated. `step` must make its results device-invariant itself (`steps.train_step_fn`
    with `axis_name=DATA_AXIS` averages over the axis); the replication is not checked
    (check_vma=False): an invariant check would also make autodiff sum the gradients of the
    replicated parameters over the devices, which the step's own mean already does."""
    return jax.shard_map(step, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
                         out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Axis `axis` (the batch: 0, or 1 under a leading steps axis) split over "data", other axes
    whole."""
    return NamedSharding(mesh, PartitionSpec(*(None,) * axis, DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The rows each process's data pipeline must deliver for a global batch.

    Raises:
      ValueError: if the global batch does not split evenly over the mesh's devices.
    """
    if global_batch_size % mesh.size:
        raise ValueError(f"global batch size {global_batch_size} does not split over {mesh.size} devices; "
                         f"use a multiple of {mesh.size}")
    return global_batch_size // jax.process_count()


def is_prng_key(x: Any) -> bool:
    """Whether `x` is an array of typed PRNG keys (which transfer as their key data)."""
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` copied to every device of `mesh`.

    In a multi-host run every process must pass the same values (same seed, same checkpoint).
    """
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if is_prng_key(x):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """A host batch (nested dict of numpy arrays, this process's rows) -> global sharded arrays.

    Each process passes its own `per_process_batch_size` rows; the global batch is their
    concatenation in process order. On one host this is a plain scatter over the devices.
    `axis` is the batch axis (1 for k batches stacked on a leading axis).

    Raises:
      ValueError: naming the field whose rows do not split over this process's devices.
    """
    sharding = batch_sharding(mesh, axis)
    local = len(mesh.local_devices)

    def put(path, x):
        x = np.asarray(x)
        if x.ndim <= axis or x.shape[axis] % local:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has shape {x.shape}: its batch "
                             f"axis {axis} must split evenly over this process's {local} devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)


def put_state(state: Any, mesh: Mesh) -> Any:
    """The train state (params, batch statistics, optimiser state, step) replicated on `mesh`."""
    return replicate(state, mesh)


def put_batch(batch: Any, mesh: Mesh) -> Any:
    """A host batch sharded along its leading axis over `mesh` (see `shard_batch`)."""
    return shard_batch(batch, mesh)


def put_batches(batches: Any, mesh: Mesh) -> Any:
    """k host batches stacked on a leading axis, each sharded like `put_batch`'s."""
    return shard_batch(batches, mesh, axis=1)


def put_eval_batch(batch: Any, mesh: Mesh) -> Any:
    """An evaluation batch for a jitted eval function under `mesh`.

    One process: sharded like a training batch, so the devices split the work. Several
    processes: every process iterates the same evaluation clips, so the batch is replicated and
    each process gets all logits back (redundant compute, but no per-process eval sharding and
    no gather of the results).
    """
    return shard_batch(batch, mesh) if jax.process_count() == 1 else replicate(batch, mesh)


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, reports, saved models): process 0.
    Checkpoints are the exception: orbax coordinates every process's part of a save."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here for all the others (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
    """Numpy copies of global arrays on every process (gathers shards held by other hosts)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
