"""What a node runtime is: it advertises models, serves routes, reports its load."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from litestar.handlers import BaseRouteHandler

from llmlb_core.protocol import ModelAdvert

if TYPE_CHECKING:
    from llmlb_node.settings import NodeSettings


@dataclass
class RuntimeLoad:
    active_jobs: int = 0
    queued_jobs: int = 0
    loaded_models: list[str] = field(default_factory=list)


class Runtime(ABC):
    """One runtime instance inside a node process."""

    type_name: str = ""
    # How many requests this runtime can run at once (the router balances on it).
    slots: int = 1

    @abstractmethod
    def models(self) -> list[ModelAdvert]:
        """Models this runtime can serve now (may change; re-read on every heartbeat)."""

    @abstractmethod
    def routes(self) -> list[BaseRouteHandler]:
        """OpenAI-shaped route handlers; the node guards them with the router's credential."""

    @abstractmethod
    def load(self) -> RuntimeLoad:
        """Current load, reported in heartbeats."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called when the node starts serving."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called when the node stops; free models and threads here."""


@dataclass(frozen=True)
class RuntimeType:
    """A runtime implementation registered by a plugin."""

    name: str
    factory: Callable[[NodeSettings], Runtime | None]
    description: str = ""
    # Return None from the factory when the runtime has nothing to serve on this node.
