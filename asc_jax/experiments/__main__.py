import sys

from asc_jax.experiments.cli import main

sys.exit(main())
