"""`python -m asc_jax.quantize`: the command of `asc_jax.quantize.cli`."""
from asc_jax.quantize.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
