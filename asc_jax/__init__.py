"""asc-jax: data-efficient, low-complexity acoustic scene classification in JAX."""

__version__ = "0.1.0"


def setup_logging(fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO-level console logging for a command-line entry point.

    `force=True` because importing orbax configures the root logger at WARNING first, which makes
    a plain `logging.basicConfig` a no-op and hides the run's own messages ("resumed from step N").
    """
    import logging

    logging.basicConfig(level=logging.INFO, format=fmt, force=True)


COMPILATION_CACHE_ENV = "ASC_JAX_XLA_CACHE"


def setup_compilation_cache(default: str = "~/.cache/asc_jax/xla") -> str | None:
    """Turns on JAX's persistent compilation cache for a command-line entry point; returns its
    folder, or None when disabled.

    XLA:CPU takes 20-35 s to compile a student's train step; a rerun of the same program (a
    resumed run, the next run of a grid with the same model and shapes, the evaluation and
    deploy programs) reads it back from disk instead. `$ASC_JAX_XLA_CACHE` names the folder;
    "off" (or "") disables it; without it, a folder set through JAX's own JAX_COMPILATION_CACHE_DIR
    is kept. Programs that compile in under a second are not stored.
    """
    import os

    import jax

    if COMPILATION_CACHE_ENV not in os.environ and jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir  # JAX's own setting (JAX_COMPILATION_CACHE_DIR)
    folder = os.environ.get(COMPILATION_CACHE_ENV, default)
    if folder.strip().lower() in ("", "off", "0", "none"):
        return None
    folder = os.path.expanduser(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder
