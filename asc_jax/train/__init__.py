"""Training: functional state, jitted steps, the train-and-evaluate loop."""
from asc_jax.train.loop import train_and_evaluate  # noqa: F401
