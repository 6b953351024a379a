"""`python -m asc_jax.device_specific`: the command of `asc_jax.device_specific.cli`."""
from asc_jax.device_specific.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
