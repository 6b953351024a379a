"""Int8 post-training quantization and quantization-aware finetuning of deploy (fused) models.

Scheme (the per-channel int8 convention of ONNX QDQ and TFLite):
  * conv weights: symmetric, per output channel, q = clip(round(w / s), -127, 127) with
    s = max|w| / 127 over the channel; stored as int8 plus one float32 scale per output channel;
  * conv inputs: per tensor, affine int8 (scale and zero point) from a range [lo, hi] calibrated
    on a batch of log-mels (min/max or percentiles) and widened to contain 0, so that the convs'
    zero padding and the zeros after ReLU stay exact. Most conv inputs follow a ReLU and are
    non-negative: an affine code uses all 256 levels on them, a symmetric one only 128;
  * biases, GRN's two scalars, residual sums, pooling and the final mean stay float32 (integer
    runtimes keep biases as int32 at scale s_in * s_w, which is as exact).
The quantized model is simulated in float: its int8 weights are dequantized in the forward pass
and every conv input is fake-quantized (quantized, then dequantized). That computes the same
products as an int8 x int8 -> int32 kernel followed by rescaling, up to float32 summation order.

Quantization-aware finetuning: `prepare_qat` turns every conv into a `FakeQuantConv` whose float
kernel is fake-quantized in the forward pass with a straight-through estimator (identity gradient
for weights, which absmax scaling never clips; for inputs the gradient passes inside the
calibrated range and is zero outside, as TensorFlow's FakeQuantWithMinMaxVars). The ranges are
`ActRange` variables, not Params, so the functional train step (`asc_jax.train.steps`) keeps them
fixed; `calibrate` + `set_ranges` re-estimate them after finetuning. `convert_qat` gives the int8
model, whose forward pass equals the QAT model's. `finetune_qat` runs the finetuning with the
production train step (`asc_jax.train.steps.make_train_step`: the model's frontend, training
augmentations, cross-entropy) from the PTQ ranges, which it keeps, so the int8 model is the
finetuned one.

Why not qwix (checked with qwix 0.1.8): `qwix.quantize_model(deploy_rep_mobile,
qwix.PtqProvider([qwix.QuantizationRule(weight_qtype=jnp.int8, act_qtype=jnp.int8)]), x)` quantizes
only the two stem convs (2,376 of 124,862 parameters). qwix intercepts calls to
`jax.lax.conv_general_dilated`, `jax.lax.dot_general` and `jnp.einsum` and recognises a weight by
finding the operand among the calling module's nnx.Params, and
  * `DepthwiseConv` with conv_lowering "taps" (the CPU default) computes its taps with
    elementwise multiplies (no conv to intercept),
  * `PointwiseConv` with "taps" contracts `kernel[0, 0]`, a new array in the eager call that
    `quantize_model` makes, so qwix takes it for an activation and the float kernel stays in the model;
moreover its PTQ conv path quantizes activations with dynamic per-example scales (static ranges
need the QT provider's moving-average statistics), and its symmetric int8 code uses the bound
127.5 with a saturating cast (codes -128..127), not the -127..127 per-channel convention above.
So the scheme is implemented here, on the module tree, in a few small functions:
  * `numerics`: weight and activation codes, fake quantization with straight-through gradients;
  * `layers`: the quantized conv forms (`FakeQuantConv`, `Int8Conv`) and their Variables;
  * `convert`: module trees float -> int8, float -> QAT and QAT -> int8, and the saved int8 form
    (importing this package registers it in `asc_jax.checkpoint.MODEL_FORMS`);
  * `calibration`: activation ranges (`calibrate`) and post-training quantization;
  * `qat`: quantization-aware finetuning; `config`: QuantConfig, QATConfig;
  * `cli`: `python -m asc_jax.quantize` (PTQ / QAT of a saved deploy model, with its report).
The parameter memory of a quantized model is `asc_jax.complexity.memory_report`.
"""
from asc_jax.quantize.calibration import calibrate, post_training_quantize
from asc_jax.quantize.cli import calibration_mels, evaluate_quantized, main, summary
from asc_jax.quantize.config import CALIBRATIONS, QATConfig, QuantConfig
from asc_jax.quantize.convert import (QUANT_STATE, conv_layers, convert_qat, prepare_qat, quantize, save_quantized,
                                      set_ranges)
from asc_jax.quantize.layers import (QUANT_CONVS, ActRange, ConvSpec, FakeQuantConv, Int8Conv, QuantWeight,
                                     WeightScale)
from asc_jax.quantize.numerics import (act_qparams, dequantize_weight, fake_quant_act, fake_quant_weight,
                                       quantize_weight)
from asc_jax.quantize.qat import finetune_qat

__all__ = [
    "CALIBRATIONS", "QATConfig", "QuantConfig",
    "act_qparams", "dequantize_weight", "fake_quant_act", "fake_quant_weight", "quantize_weight",
    "QUANT_CONVS", "ActRange", "ConvSpec", "FakeQuantConv", "Int8Conv", "QuantWeight", "WeightScale",
    "QUANT_STATE", "conv_layers", "convert_qat", "prepare_qat", "quantize", "save_quantized", "set_ranges",
    "calibrate", "post_training_quantize",
    "finetune_qat",
    "calibration_mels", "evaluate_quantized", "main", "summary",
]
