"""Model zoo. Importing this package registers every model in `asc_jax.models.registry.MODELS`."""
from asc_jax.models import (  # noqa: F401  (register on import)
    bc_resnet,
    cp_resnet,
    ecapa_tdnn,
    mobilenet,
    passt,
    rep_mobile,
    resnet34,
    tf_sepnet,
)
from asc_jax.models.registry import MODELS, build_model, has_deploy_form, with_default_lowering  # noqa: F401
