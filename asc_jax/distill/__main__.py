"""``python -m asc_jax.distill precompute ...`` (see ``asc_jax.distill.cli``)."""
from asc_jax.distill.cli import main

main()
