"""Named teacher ensembles (DESIGN rule 5: a registry), selected on the architecture in a
teacher's name. ``store.resolve_teachers`` applies them to the teachers a store holds."""
from __future__ import annotations

from typing import Callable, Sequence

from asc_jax.registry import Registry

# Teacher names are "<arch>" or "<arch>-<tag>" (e.g. "passt-s1", "cp_resnet-dir-2"); the arch is
# the model registry name, which is what the ensembles below select on.
CNN_ARCHS = ("cp_resnet", "cp_mobile", "rep_mobile", "bc_resnet", "tf_sepnet")
TRANSFORMER_ARCHS = ("passt",)

ENSEMBLES: Registry[Callable[[Sequence[str]], tuple[str, ...]]] = Registry("teacher ensemble")


def teacher_arch(name: str) -> str:
    """The architecture of a teacher named ``<arch>`` or ``<arch>-<tag>``."""
    return name.split("-", 1)[0]


@ENSEMBLES.register("cnn")
def _cnn_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in available if teacher_arch(n) in CNN_ARCHS)


@ENSEMBLES.register("transformer")
def _transformer_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in available if teacher_arch(n) in TRANSFORMER_ARCHS)


@ENSEMBLES.register("all")
def _all_teachers(available: Sequence[str]) -> tuple[str, ...]:
    return tuple(available)
