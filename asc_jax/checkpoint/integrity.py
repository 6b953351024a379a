"""Integrity records of saved arrays and files, and the one error a damaged artifact raises.

Every array is recorded as {shape, dtype, sha256 of dtype + shape + bytes} under its
slash-joined path, every file as {bytes, sha256}; checks against the records list every
problem, and `damaged` turns them (and orbax failures, summarised) into one CorruptModelError.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from asc_jax.parallel import is_prng_key

INTEGRITY_KEY = "integrity"  # in model.json and in a checkpoint step's custom metadata
_MAX_LISTED = 8  # damaged files / arrays named in one message


class CorruptModelError(ValueError):
    """A saved model or training checkpoint that cannot be read back as it was written.

    The message names the directory and every damaged file or array found (up to a few). An
    orbax / tensorstore failure is summarised in the message instead of chained: its traceback
    runs to a hundred lines of asyncio internals that say less than the summary.
    """


# ---------------------------------------------------------------------------------------------
# Array and file records
# ---------------------------------------------------------------------------------------------

def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """(slash-joined path, leaf) for every leaf; an nnx.Variable's trailing `.value` is dropped."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]
        out.append(("/".join(_key_name(k) for k in path), leaf))
    return out


def _host_leaves(tree: Any) -> dict[str, tuple[np.ndarray, str]]:
    """{path: (host copy, dtype name)}; typed PRNG keys as their key data, in one transfer.

    Training states are replicated (asc_jax.parallel), so every process hashes its own copy.
    """
    named = named_leaves(tree)
    dtypes = [str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype) for _, x in named]
    host = jax.device_get([jax.random.key_data(x) if is_prng_key(x) else x for _, x in named])
    return {path: (np.asarray(a), dtype) for (path, _), a, dtype in zip(named, host, dtypes)}


def _digest(a: np.ndarray, dtype: str) -> str:
    h = hashlib.sha256(f"{dtype}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def array_records(tree: Any) -> dict[str, dict[str, Any]]:
    """{path: {"shape", "dtype", "sha256"}} for every leaf of `tree`."""
    return {path: {"shape": list(a.shape), "dtype": dtype, "sha256": _digest(a, dtype)}
            for path, (a, dtype) in _host_leaves(tree).items()}


def array_problems(tree: Any, expected: Mapping[str, Mapping[str, Any]]) -> list[str]:
    got = _host_leaves(tree)
    problems = [f"array {path} is missing" for path in expected if path not in got]
    problems += [f"array {path} was not recorded at save time" for path in got if path not in expected]
    for path, rec in expected.items():
        if path not in got:
            continue
        a, dtype = got[path]
        if list(a.shape) != list(rec["shape"]) or dtype != rec["dtype"]:
            problems.append(f"array {path} is {dtype}{list(a.shape)}, saved as {rec['dtype']}{list(rec['shape'])}")
        elif _digest(a, dtype) != rec["sha256"]:
            bad = int(np.size(a) - np.isfinite(a).sum()) if np.issubdtype(a.dtype, np.inexact) else 0
            problems.append(f"array {path} differs from the saved one (sha256 mismatch"
                            + (f"; {bad} of {a.size} values non-finite)" if bad else ")"))
    return problems


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_records(directory: Path, sub: str) -> dict[str, dict[str, Any]]:
    """{"weights/<file>": {"bytes", "sha256"}} for every file under `directory / sub`."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _file_sha256(p)}
            for p in sorted((directory / sub).rglob("*")) if p.is_file()}


def file_problems(directory: Path, expected: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for name, rec in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {rec['bytes']} when saved")
        elif _file_sha256(path) != rec["sha256"]:
            problems.append(f"{name} changed since it was saved (sha256 mismatch)")
    return problems


# ---------------------------------------------------------------------------------------------
# Orbax failures
# ---------------------------------------------------------------------------------------------

def orbax_summary(err: BaseException) -> str:
    """The most specific line of an exception chain (tensorstore's, not orbax's wrapper)."""
    texts = []
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).strip().splitlines()
        if text:
            texts.append(f"{type(err).__name__}: {text[0]}")
        err = err.__cause__ or err.__context__
    if not texts:
        return "unknown error"
    # orbax's own wrappers ("Encountered error while reading array index...") say least.
    specific = [t for t in texts if "See full TensorStore details" not in t]
    line = (specific or texts)[-1].split(" [tensorstore_spec")[0]  # a JSON spec follows
    return line if len(line) <= 400 else line[:400] + "..."


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Mutes orbax's and asyncio's logged copies of a failure we are about to raise ourselves."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def damaged(what: str, problems: list[str], advice: str) -> CorruptModelError:
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    return CorruptModelError(f"{what} is damaged: " + "; ".join(listed)
                             + (f"; and {more} more" if more else "") + f". {advice}")


# ---------------------------------------------------------------------------------------------
# Finiteness
# ---------------------------------------------------------------------------------------------

@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def first_non_finite(tree: Any) -> str | None:
    """'path (n of size values non-finite)' of the first floating-point leaf holding NaN/inf, else None.

    One jitted reduction over all leaves; only a bool per leaf comes back to the host.
    """
    named = [(path, x) for path, x in named_leaves(tree)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not named:
        return None
    flags = np.asarray(jax.device_get(_finite_flags([x for _, x in named])))
    if flags.all():
        return None
    path, x = named[int(np.argmin(flags))]
    bad = int(jax.device_get((~jnp.isfinite(x)).sum()))
    return f"{path} ({bad} of {x.size} values non-finite)"
