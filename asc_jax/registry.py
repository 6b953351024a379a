"""A tiny name -> factory registry (big_vision `pp/registry.py` style).

Registries replace if-chains for models, augmentations, teachers and schedules: adding a new
variant is one decorated function, and an unknown name fails with the list of known ones.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually constructors).

    Example:
      MODELS = Registry("model")

      @MODELS.register("rep_mobile")
      def build(...): ...

      MODELS.get("rep_mobile")(...)
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
