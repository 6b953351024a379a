"""Model zoo. Importing this package registers every model in `asc_jax.models.registry.MODELS`."""
from asc_jax.models import passt, rep_mobile  # noqa: F401  (register on import)
from asc_jax.models.registry import MODELS, build_model  # noqa: F401
