"""asc-jax: data-efficient, low-complexity acoustic scene classification in JAX."""

__version__ = "0.1.0"


def setup_logging(fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO-level console logging for a command-line entry point.

    `force=True` because importing orbax configures the root logger at WARNING first, which makes
    a plain `logging.basicConfig` a no-op and hides the run's own messages ("resumed from step N").
    """
    import logging

    logging.basicConfig(level=logging.INFO, format=fmt, force=True)
