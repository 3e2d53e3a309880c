"""What a node runtime is, what a plugin registers for it, and what the node gives it.

A plugin registers a :class:`RuntimeType` (name, settings type, factory). When the node starts,
it parses the runtime's own settings table once (``[runtime.<name>]`` of the node config,
``LLMLB_NODE_RUNTIME__<NAME>__<KEY>``, and the runtime's ``llmlb node`` flags) into that type and
calls the factory with a :class:`RuntimeContext`. The factory returns a :class:`Runtime`, or
None when the runtime has nothing to serve on this node. Handlers close over their runtime, as
capabilities' handlers close over their context on the router: no app state, no string keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import click
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import JobProgress, ModelAdvert, NoSettings, SettingsError

S = TypeVar("S")


class RuntimeConfigError(SettingsError):
    """A runtime cannot start as configured: e.g. it was named with ``--runtime`` and has nothing
    to serve, or it lacks a setting it needs. ``llmlb node`` prints it in one line, exit 2."""


@dataclass
class RuntimeLoad:
    active_jobs: int = 0
    queued_jobs: int = 0
    loaded_models: list[str] = field(default_factory=list)
    # Progress of running jobs, reported in heartbeats and shown in the router's /v0/nodes.
    jobs: list[JobProgress] = field(default_factory=list)


class Runtime(ABC):
    """One runtime instance inside a node process.

    The node core does two things for every runtime, so that a runtime need not: it counts the
    requests running on the runtime's routes (:attr:`active_jobs`, what the default
    :meth:`load` reports), and it answers a JSON request for a model the runtime does not
    advertise with a 404 ``model_not_found`` before the handler runs
    (:attr:`refuse_unknown_models`)."""

    type_name: str = ""
    # How many requests this runtime can run at once (the router balances on it).
    slots: int = 1
    # Set by the node core, never by the runtime: the requests on this runtime's routes that
    # passed the router's credential and the model check and have not ended (a streamed answer
    # ends when its last byte is sent, or its client left).
    active_jobs: int = 0
    # The node core refuses (404 model_not_found) a request whose JSON body names a "model"
    # that `models()` does not list, before the handler runs. A form (multipart) body is not
    # read: its handler checks the model itself. False: every model reaches the handlers (e.g.
    # a proxy whose server decides).
    refuse_unknown_models: bool = True

    @abstractmethod
    def models(self) -> list[ModelAdvert]:
        """Models this runtime can serve now (may change; re-read on every heartbeat)."""

    @abstractmethod
    def routes(self) -> list[BaseRouteHandler]:
        """OpenAI-shaped route handlers; the node guards them with the router's credential."""

    def load(self) -> RuntimeLoad:
        """Current load, reported in heartbeats. By default the node core's count of
        :attr:`active_jobs`, and every advertised model as loaded; a runtime that queues jobs
        or loads models on demand says so itself."""
        return RuntimeLoad(active_jobs=self.active_jobs, loaded_models=[m.id for m in self.models()])

    def status(self) -> dict[str, Any]:
        """Optional: what an operator should see of the runtime's state (the node's ``/health``
        shows it under ``runtime_status``), e.g. what stopping jobs has cost. JSON values only."""
        return {}

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called when the node starts serving."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called when the node stops; free models and threads here."""


@dataclass(frozen=True)
class RuntimeContext(Generic[S]):
    """Everything the node gives a runtime's factory: typed, built once per runtime."""

    # The runtime type's name, e.g. "stable_diffusion".
    name: str
    # Its settings table, converted to `RuntimeType.settings`.
    settings: S
    # The node's id and display name, as the router knows them.
    node_id: str
    node_name: str
    # The node's models directory (`--models-dir`).
    models_dir: Path
    # The operator named this runtime with `--runtime`: a factory that has nothing to serve
    # should raise RuntimeConfigError saying why, instead of returning None.
    requested: bool = False


@dataclass(frozen=True, kw_only=True)
class RuntimeType(Generic[S]):
    """A runtime implementation, registered by a plugin (``llmlb_node_register_runtimes``)."""

    # Name operators use in `--runtime <name>` and `[runtime.<name>]`, e.g. "openai_compatible".
    name: str
    # Builds the runtime; returns None when it has nothing to serve on this node.
    factory: Callable[[RuntimeContext[S]], Runtime | None]
    # The runtime's settings table is converted to this type once, at start-up; a bad value stops
    # `llmlb node` with one line naming the runtime, the key and its environment variable.
    settings: type[S] = NoSettings  # type: ignore[assignment]
    description: str = ""
    # Whether it serves files from the node's models dir (`--models-dir`): `llmlb config check`
    # warns about a missing models dir only when a runtime the node would start needs one. A
    # runtime that fronts a server or computes its answers says False.
    needs_models_dir: bool = True
    # `llmlb node` flags that set keys of this runtime's settings table. Each option's name (its
    # plain declaration, e.g. click.Option(["--threads", "threads"])) is the key; the node shows
    # the settings field's default and prefixes the help with the runtime's name.
    cli_options: Sequence[click.Option] = ()
