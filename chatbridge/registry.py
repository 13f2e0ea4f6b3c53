"""Named builders, LAVIS-style but boring: a registry maps names to builder functions and nothing else.

Registration is explicit (each subpackage imports its modules by name), a duplicate name is an error, and an
unknown name raises with the list of known names, so a typo in a YAML fails at load time rather than at launch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

BuilderT = TypeVar("BuilderT", bound=Callable)


class Registry(Generic[BuilderT]):
    """A name -> builder map for one kind of component (encoders, connectors, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, BuilderT] = {}

    def register(self, name: str) -> Callable[[BuilderT], BuilderT]:
        """Decorator: `@ENCODERS.register("eva_vit_g") def build_eva_vit_g(cfg): ...`."""

        def add(builder: BuilderT) -> BuilderT:
            if name in self._builders:
                raise KeyError(f"duplicate {self.kind} {name!r}: already registered by {self._builders[name]!r}")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str) -> BuilderT:
        """The builder registered under `name`; raises KeyError listing the known names otherwise."""
        try:
            return self._builders[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {self.names()}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


ENCODERS: Registry = Registry("encoder")
CONNECTORS: Registry = Registry("connector")
LLMS: Registry = Registry("llm")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset builder")
PROCESSORS: Registry = Registry("processor")
TASKS: Registry = Registry("evaluation task")
CHAT_TEMPLATES: Registry = Registry("chat template")


def load_builtin_components() -> None:
    """Import every module that registers builders, so that all names resolve (explicit, no import *)."""
    import chatbridge.data  # noqa: F401  (registers processors and dataset builders)
    import chatbridge.evaluation  # noqa: F401  (registers evaluation tasks)
    import chatbridge.models  # noqa: F401  (registers encoders, connectors, llms, models)
