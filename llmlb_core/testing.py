"""A router and a node in one process, for a plugin's tests: no ports, no child processes.

::

    from llmlb_core.testing import Cluster

    async def test_reverse() -> None:
        async with Cluster(capabilities=[capability_plugin], runtimes=[runtime_plugin]) as cluster:
            answer = await cluster.client.post("/v1/reverse", json={"model": "reverser-1", "text": "hi"})
            assert answer.json()["text"] == "ih"

:class:`Cluster` builds the real router app (``llmlb serve``'s, with the given capability
plugins) and the real node app (``llmlb node``'s, with the given runtime plugins) and runs their
start-up and shut-down (ASGI lifespan). Every request stays in the process, through
``httpx.ASGITransport``: the test's clients call the router's app; the router's upstream client
(:func:`llmlb_core.router.app.create_app`'s ``upstream_transport``) reaches the node's app; the
node registers and heartbeats through its link's client (``create_node_app``'s
``router_transport``) into the router's app. Keys are made as an admin would make them: the
node's, and an ``api`` key for :attr:`Cluster.client`.

Settings are read as the processes read them: ``router=`` and ``node=`` are keys of the router's
settings and the node's (``{"plugin": {"reverse": {...}}}``, ``{"runtime": {"reverser": {...}}}``),
``environ=`` the ``LLMLB_*`` variables (none of the process's own are read).

This module composes the router and the node, as the ``llmlb`` command does; it is the one
module of ``llmlb_core`` that imports ``llmlb_node`` (``.importlinter`` names the exception), and
only when a cluster starts a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from litestar import Litestar

from llmlb_core.config.settings import load_settings
from llmlb_core.router.app import create_app

__all__ = ["ADMIN_KEY", "ROUTER_URL", "Cluster", "InProcessServers", "lifespan"]

# The router's admin key in a test cluster, and the address its clients and nodes use for it
# (never listened on: requests go to the app through ASGI).
ADMIN_KEY = "sk-llmlb-testing-admin-key-0123456789"
ROUTER_URL = "http://router.llmlb.test"


class InProcessServers(httpx.AsyncBaseTransport):
    """An httpx transport that hands each request to the ASGI app serving its origin
    (``scheme://host:port``); an origin with no app is refused as a closed port would be."""

    def __init__(self) -> None:
        self._apps: dict[str, httpx.ASGITransport] = {}

    def add(self, base_url: str, app: Any) -> None:
        """Serve ``base_url``'s origin with ``app`` (an ASGI app)."""
        self._apps[_origin(httpx.URL(base_url))] = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._apps.get(_origin(request.url))
        if transport is None:
            raise httpx.ConnectError(f"no in-process server at {_origin(request.url)}", request=request)
        return await transport.handle_async_request(request)


def _origin(url: httpx.URL) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run an ASGI app's start-up, then (on leaving) its shut-down, as a server does; a failed
    start-up raises (``RuntimeError`` with the app's message, or the app's own exception)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put), name="llmlb-testing-lifespan")

    async def step(message: str, done: str) -> None:
        await inbox.put({"type": message})
        answer = asyncio.ensure_future(outbox.get())
        await asyncio.wait([answer, task], return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            task.result()  # the app's own exception
            raise RuntimeError(f"{message}: the app ended without answering")
        reply = answer.result()
        if reply["type"] != done:
            raise RuntimeError(f"{message} failed: {reply.get('message', reply['type'])}")

    await step("lifespan.startup", "lifespan.startup.complete")
    try:
        yield
    finally:
        await step("lifespan.shutdown", "lifespan.shutdown.complete")
        await task


class Cluster:
    """A router with ``capabilities`` (capability plugins: objects with ``@hookimpl``
    functions, as an entry point's module is) and, when ``runtimes`` (runtime plugins) are given,
    one node running them, registered and online; both in this process.

    - ``client``: an ``httpx.AsyncClient`` for the router with an ``api`` key;
    - ``admin``: the same with the admin key (``/v0/...``);
    - ``node_client``: the node's app, with the router's credential (as the router calls it);
    - ``router_app``, ``node_app``, ``node_id``, ``data_dir``, ``models_dir``;
    - ``await cluster.heartbeat()``: the node heartbeats now (what it reports: load, models).

    ``models_dir``: the node's (default: an empty folder under ``data_dir``); ``data_dir``: the
    router's (default: a temporary folder, removed on exit). Only the given plugins and the
    built-in ones are loaded, never installed entry points unless ``router``/``node`` settings
    ask for them; the node starts the runtimes the given plugins register, unless ``node``
    names ``runtimes``."""

    def __init__(
        self,
        *,
        capabilities: Iterable[object] = (),
        runtimes: Iterable[object] = (),
        models_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        router: Mapping[str, Any] | None = None,
        node: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.capability_plugins = list(capabilities)
        self.runtime_plugins = list(runtimes)
        self._models_dir = models_dir
        self._data_dir = data_dir
        self.router_settings = dict(router or {})
        self.node_settings = dict(node or {})
        self.environ = dict(environ or {})
        self.timeout_s = timeout_s
        self._stack = contextlib.AsyncExitStack()
        self.node_app: Litestar | None = None
        self.node_id: str | None = None

    async def __aenter__(self) -> Cluster:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        stack = self._stack
        if self._data_dir is None:
            self._data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="llmlb-testing-"))
        self.data_dir = Path(self._data_dir)
        self.models_dir = Path(self._models_dir) if self._models_dir is not None else self.data_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        settings = load_settings(
            None,
            environ=self.environ,
            **{
                "data_dir": str(self.data_dir / "router"),
                "admin_key": ADMIN_KEY,
                "load_entry_points": False,
                "public_url": ROUTER_URL,
                **self.router_settings,
            },
        )
        self.servers = InProcessServers()
        self.router_app = create_app(
            settings, extra_plugins=self.capability_plugins, upstream_transport=self.servers
        )
        self.servers.add(ROUTER_URL, self.router_app)
        await stack.enter_async_context(lifespan(self.router_app))
        self.admin = await stack.enter_async_context(self._client(ROUTER_URL, ADMIN_KEY))
        self.client = await stack.enter_async_context(self._client(ROUTER_URL, await self.make_key(["api"])))
        if self.runtime_plugins or self.node_settings:
            await self._start_node()

    def _client(self, base_url: str, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.servers,
            base_url=base_url,
            headers={"authorization": f"Bearer {key}"},
            timeout=self.timeout_s,
        )

    async def make_key(self, scopes: list[str], name: str = "testing") -> str:
        """A new key with ``scopes``, made through the admin API."""
        answer = await self.admin.post("/v0/keys", json={"name": name, "scopes": scopes})
        answer.raise_for_status()
        key: str = answer.json()["key"]
        return key

    async def _start_node(self) -> None:
        # The node, only now: a capability's tests need no llmlb_node.
        from llmlb_node.app import create_node_app
        from llmlb_node.plugins import load_runtime_types
        from llmlb_node.settings import load_node_settings

        node = dict(self.node_settings)
        if "runtimes" not in node:
            installed = set(load_runtime_types(load_entry_points=False))
            given = load_runtime_types(self.runtime_plugins, load_entry_points=False)
            node["runtimes"] = sorted(set(given) - installed)
        settings = load_node_settings(
            None,
            environ=self.environ,
            runtime_settings=node.pop("runtime", {}),
            **{
                "router_url": ROUTER_URL,
                "api_key": await self.make_key(["node"], name="testing-node"),
                "name": "testing-node",
                "models_dir": str(self.models_dir),
                **node,
            },
        )
        self.node_id = settings.id
        self.node_app = create_node_app(
            settings, extra_plugins=self.runtime_plugins, router_transport=self.servers
        )
        self.servers.add(settings.base_url, self.node_app)
        await self._stack.enter_async_context(lifespan(self.node_app))
        link = self.node_app.state.node_link
        async with asyncio.timeout(self.timeout_s):
            while not link.registered.is_set():
                if link.fatal is not None:
                    raise RuntimeError(f"the node could not register: {link.fatal}")
                await asyncio.sleep(0.005)
        self.node_client = await self._stack.enter_async_context(
            self._client(settings.base_url, self.node_app.state.node_token)
        )

    async def heartbeat(self) -> None:
        """Send the node's heartbeat now (its load and models reach the router)."""
        if self.node_app is None:
            raise RuntimeError("this cluster has no node (give runtimes=[...])")
        await self.node_app.state.node_link.beat()
