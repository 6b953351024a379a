"""Training checkpoints of one run: latest (resume) and best-N by a metric, verified on restore.

The layout, and why two managers, are in the package docstring (`asc_jax.checkpoint`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

from asc_jax.checkpoint.integrity import (
    INTEGRITY_KEY, array_problems, array_records, damaged, first_non_finite, orbax_summary, quiet_orbax)

log = logging.getLogger(__name__)


class TrainCheckpoints:
    """Latest (for resume) and best-N (by a metric) checkpoints of one run; a context manager.

    Saves refuse a state with a non-finite leaf (FloatingPointError) and record every array's
    checksum; restores verify them (CorruptModelError naming the step directory and the array).
    """

    def __init__(self, directory: str | Path, *, keep_best: int = 3, best_metric: str = "macro_accuracy"):
        directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()},
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep_best, create=True, best_fn=lambda m: m[best_metric], best_mode="max"),
            item_names=("state",),
        )
        # (step, state, array records) of the last save: save_best and save_latest of one step
        # share them instead of hashing the state twice. The state itself is kept, not its id():
        # an id can be reused by a new object once the old one is freed. Keeping it costs no
        # memory in training, where the next step donates (deletes) its buffers.
        self._records: tuple[int, Any, dict] | None = None

    def __enter__(self) -> "TrainCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._records = None
        self.latest.close()
        self.best.close()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _integrity(self, step: int, state: Any) -> dict[str, Any]:
        """Refuses a non-finite state; returns the custom metadata recording its arrays."""
        if self._records is None or self._records[0] != step or self._records[1] is not state:
            leaf = first_non_finite(state)
            if leaf is not None:
                raise FloatingPointError(
                    f"non-finite training state at step {step}: {leaf}; training stopped before saving "
                    f"it ({self.last_good()}). Lower optim.lr or enable optim.grad_clip.")
            self._records = (step, state, array_records(state))
        return {INTEGRITY_KEY: {"algorithm": "sha256", "arrays": self._records[2]}}

    def save_latest(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
            custom_metadata=self._integrity(step, state))

    def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics={self.best_metric: float(metrics[self.best_metric])},
                       custom_metadata=self._integrity(step, state))

    @staticmethod
    def _step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
        return Path(manager.directory) / str(step)

    @staticmethod
    def _recorded(manager: ocp.CheckpointManager, step: int) -> dict | None:
        """The step's array records, or None when it has none (or its metadata is unreadable)."""
        try:
            with quiet_orbax():
                custom = manager.metadata(step).custom_metadata or {}
        except Exception:  # noqa: BLE001 - an unreadable metadata file means "no records"
            return None
        return (custom.get(INTEGRITY_KEY) or {}).get("arrays")

    def _restore(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> Any:
        """Restores `step` of `manager` and verifies it against the records saved with it."""
        step_dir = self._step_dir(manager, step)
        advice = (f"Delete {step_dir} to fall back to an older checkpoint (with none left in "
                  f"{manager.directory}, training starts again from step 0).")
        problems = []
        metadata = step_dir / "_CHECKPOINT_METADATA"
        try:
            json.loads(metadata.read_text())
        except FileNotFoundError:
            problems.append("_CHECKPOINT_METADATA (which holds the array checksums) is missing")
        except (UnicodeDecodeError, ValueError) as err:
            problems.append(f"_CHECKPOINT_METADATA (which holds the array checksums) is not valid JSON ({err})")
        records = self._recorded(manager, step)
        try:
            with quiet_orbax():
                restored = manager.restore(step, args=args)
        except Exception as err:  # noqa: BLE001 - every orbax failure means a damaged step
            raise damaged(f"checkpoint {step_dir}", problems + [f"orbax cannot restore it ({orbax_summary(err)})"],
                           advice) from None
        if records is not None:
            problems += array_problems(restored.state, records)
        elif not problems:
            log.warning("checkpoint %s has no array checksums (saved by an older asc-jax): restored unverified",
                        step_dir)
        leaf = first_non_finite(restored.state)
        if leaf is not None:
            problems.append(f"it holds non-finite values in {leaf}")
        if problems:
            raise damaged(f"checkpoint {step_dir}", problems, advice)
        return restored

    def restore_latest(self, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
        """Restores the newest state into `abstract_state`'s structure and rewinds the iterator.

        Raises:
          CorruptModelError: naming the step directory and the damaged file or array.
        """
        step = self.latest.latest_step()
        return self._restore(self.latest, step, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator))).state

    def last_good(self) -> str:
        """Names the newest checkpoint on disk that was verified finite when saved, or says none is.

        Waits for pending saves first, so that the answer is about what is on disk.
        """
        self.wait()
        found = [(step, kind == "latest", self._step_dir(manager, step))
                 for kind, manager in (("latest", self.latest), ("best", self.best))
                 for step in manager.all_steps()
                 if self._step_dir(manager, step).is_dir() and self._recorded(manager, step) is not None]
        if not found:
            return "no checkpoint has been saved yet"
        step, _, path = max(found)
        return f"last good checkpoint: {path} (step {step})"

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
