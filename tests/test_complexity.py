"""Complexity counting: DCASE convention rules and XLA cross-check."""
import pytest
from flax import nnx

from asc_jax import complexity
from asc_jax.models import build_model


def test_conv_and_bn_rules_on_a_toy_model():
    class Toy(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), padding="SAME", use_bias=True, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x, *, train=False):
            h = self.bn(self.conv(x[..., None]), use_running_average=not train)
            return self.fc(h.mean((1, 2))), {}

    model = Toy(nnx.Rngs(0))
    # conv: (9 + 1) * 4 params x 4x5 outputs; BN: 8 x 1; linear: (12 + 3) x 1.
    assert complexity.count_macs(model, (1, 8, 10)) == 40 * 20 + 8 + 15
    assert complexity.count_params(model) == 40 + 8 + 15
    # Batch scales MACs linearly, as torchinfo does.
    assert complexity.count_macs(model, (3, 8, 10)) == 3 * (40 * 20 + 8 + 15)


def test_patching_is_undone():
    model = build_model("cp_mobile", rngs=nnx.Rngs(0))
    call = nnx.Conv.__call__
    complexity.count_macs(model, (1, 256, 63))
    assert nnx.Conv.__call__ is call


@pytest.mark.parametrize("name,deploy,tol", [("cp_mobile", False, 0.08), ("rep_mobile", True, 0.02)])
def test_macs_agree_with_xla_cost_analysis(name, deploy, tol):
    """XLA counts 2 flops per MAC plus the elementwise work (BN, ReLU, pooling); conv work
    dominates these models, so the two estimates must agree closely, XLA's being the larger."""
    model = build_model(name, deploy=deploy, rngs=nnx.Rngs(0))
    macs = complexity.count_macs(model, (1, 256, 63))
    flops = complexity.xla_flops(model, (1, 256, 63))
    assert macs <= flops / 2 <= macs * (1 + tol)


def test_report_limits():
    rep = complexity.report(build_model("cp_mobile", rngs=nnx.Rngs(0)))
    assert rep.param_bytes("int8") == 126_952 <= complexity.DCASE_MAX_PARAM_BYTES
    assert rep.param_bytes("fp16") == 253_904
    assert rep.within_dcase_limits("int8") and not rep.within_dcase_limits("fp32")
    assert "OVER LIMIT" in rep.table() and "28,893,268" in rep.table()
