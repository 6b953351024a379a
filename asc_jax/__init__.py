"""asc-jax: data-efficient, low-complexity acoustic scene classification in JAX."""

__version__ = "0.1.0"
