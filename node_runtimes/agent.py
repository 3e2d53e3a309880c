"""The node's link to its router: register, heartbeat, re-register, drain, deregister.

Registration retries with capped backoff until the router answers (it may start after the
node), logging one line per change of state (not per retry). A 401 or 403 at registration (a
wrong, revoked or under-scoped key, or a node id that is another key's) will not change by
retrying: the link stops and sets :attr:`RouterLink.fatal`, which ends the node with that line
(exit 2: the node app's ``llmlb_core.server.serving.STOP_WHEN``). A heartbeat the router answers with
``reregister`` (it restarted and lost the node's credential) triggers a new registration at once.

Router replicas: given several router URLs (``--router`` repeated), the node registers with the
first that answers and heartbeats to that one. When its router stops answering (a connection
error, a timeout or a 5xx, at a heartbeat or a registration), the node tries the next at once,
round-robin, and re-registers there: one line per switch, and the node keeps serving its jobs
meanwhile (its HTTP server does not depend on the link). A 401 or 403 is no reason to switch:
the routers share their keys, so another would refuse the node too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import httpx
import msgspec

from llmlb_core.protocol import (
    MAX_REPORTED_JOBS,
    MODEL_ID_RULE,
    Accelerator,
    Heartbeat,
    HeartbeatReply,
    JobProgress,
    ModelAdvert,
    NodeRegistration,
    RegistrationReply,
    plain_description,
    valid_model_id,
)
from llmlb_core.server.log_format import log_field
from llmlb_core.server.tls import client_ssl_context, tls_failure
from llmlb_node.runtime import Runtime
from llmlb_node.settings import NodeSettings

log = logging.getLogger("llmlb.node.agent")

MAX_BACKOFF_S = 5.0
KEY_HINT = (
    "make a node key with `llmlb keys create NAME --scope node` (`--node NODE_ID` binds it to one "
    "node id; an admin key is needed) and start the node with --api-key KEY or LLMLB_API_KEY"
)


def _router_message(response: httpx.Response) -> str:
    """The router's error message (OpenAI-shaped), else the start of its body."""
    try:
        error = response.json()["error"]
        return f"{error['message']}".rstrip(".")
    except (ValueError, KeyError, TypeError):
        return response.text[:300].strip() or response.reason_phrase


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def refusal(response: httpx.Response, router_url: str, node_id: str) -> str:
    """What a 401 or 403 at registration means, and what to do about it (one line)."""
    message = _router_message(response)
    if _error_code(response) in ("node_id_taken", "not_node_owner"):
        return (
            f"the router {router_url} refused node id {node_id}: {message} (HTTP {response.status_code}); "
            "start the node with another --node-id, or with the key that registered it"
        )
    return (
        f"the router {router_url} refused this node's key: {message} (HTTP {response.status_code}); "
        f"{KEY_HINT}"
    )


def detect_accelerators() -> list[Accelerator]:
    """CPU always; NVIDIA GPUs when ``nvidia-smi``'s device files exist (best effort)."""
    found = [Accelerator(kind="cpu", name=f"{os.cpu_count() or 1} cores")]
    if os.path.exists("/dev/nvidia0") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        found.append(Accelerator(kind="cuda", name="nvidia"))
    return found


class RouterLink:
    def __init__(
        self,
        settings: NodeSettings,
        runtimes: list[Runtime],
        token: str,
        *,
        accelerators: Callable[[], list[Accelerator]] = detect_accelerators,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.token = token
        self._accelerators = accelerators
        self.router_urls = settings.router_urls
        # The router registered with (or being tried): an index into router_urls.
        self._current = 0
        # (router, reason) of the router the node left, until it registers elsewhere: the switch's line.
        self._left: tuple[str, str] | None = None
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {},
            timeout=httpx.Timeout(10.0, connect=3.0),
            verify=client_ssl_context(settings.router_ca_bundle, what="--router-ca-bundle"),
            transport=transport,  # tests only (llmlb_core.testing: the router's ASGI app); None: the network
        )
        self.interval_s = settings.heartbeat_interval_s or 10.0
        self.registered = asyncio.Event()
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._last_models: list[ModelAdvert] = []
        self._refused_ids: set[str] = set()
        self._beat_now = asyncio.Event()
        # Set when the router refused the node for good (see the module docstring).
        self.fatal: str | None = None
        # The last problem logged, so that a problem that lasts is one line, not one per retry.
        self._problem: str | None = None

    @property
    def router_url(self) -> str:
        """The router the node is registered with (or is trying)."""
        return self.router_urls[self._current]

    def _next_router(self) -> None:
        self._current = (self._current + 1) % len(self.router_urls)

    def _report(self, problem: str | None, level: int, message: str, *args: object) -> None:
        """Log ``message`` when the link's state changes to ``problem`` (None: all is well)."""
        if problem != self._problem:
            log.log(level, message, *args)
        self._problem = problem

    def models(self) -> list[ModelAdvert]:
        """What the runtimes advertise, as the router accepts it: a model whose id the router
        would refuse is left out (one line each, the first time), descriptions on one line."""
        adverts: list[ModelAdvert] = []
        for runtime in self.runtimes:
            for model in runtime.models():
                if not valid_model_id(model.id):
                    if model.id not in self._refused_ids:
                        self._refused_ids.add(model.id)
                        log.error(
                            "model %s of runtime %s is not advertised: a model id must be %s",
                            log_field(model.id),
                            runtime.type_name,
                            MODEL_ID_RULE,
                        )
                    continue
                description = plain_description(model.description)
                if description != model.description:
                    model = msgspec.structs.replace(model, description=description)
                adverts.append(model)
        return adverts

    def registration(self) -> NodeRegistration:
        self._last_models = self.models()
        return NodeRegistration(
            node_id=self.settings.id,
            name=self.settings.display_name,
            base_url=self.settings.base_url,
            token=self.token,
            runtime_types=[r.type_name for r in self.runtimes],
            models=self._last_models,
            slots=sum(r.slots for r in self.runtimes) or 1,
            accelerators=self._accelerators(),
            version="0.2.0",
            draining=self.draining,
        )

    def heartbeat_message(self) -> Heartbeat:
        active = queued = 0
        loaded: list[str] = []
        jobs: list[JobProgress] = []
        for runtime in self.runtimes:
            load = runtime.load()
            active += load.active_jobs
            queued += load.queued_jobs
            loaded.extend(m for m in load.loaded_models if valid_model_id(m))
            jobs.extend(j for j in load.jobs if valid_model_id(j.model))
        slots = sum(r.slots for r in self.runtimes) or 1
        models = self.models()
        changed = models != self._last_models
        self._last_models = models
        return Heartbeat(
            node_id=self.settings.id,
            active_jobs=active,
            free_slots=max(0, slots - active),
            queued_jobs=queued,
            loaded_models=loaded,
            models=models if changed else None,
            jobs=jobs[:MAX_REPORTED_JOBS],
        )

    async def register(self) -> None:
        """Register, retrying until a router answers 200: the current router first, then the
        next ones in turn (a round), backing off between rounds; on a 401 or 403, set
        :attr:`fatal` and return without registering."""
        backoff = 0.2
        while True:
            failed: list[tuple[str, str]] = []  # (router, why), in the order tried
            for _ in self.router_urls:
                reason = await self._register_here()
                if reason is None:
                    return
                failed.append((self.router_url, reason))
                self._next_router()
            if len(self.router_urls) > 1:
                self._report(
                    f"no router {sorted(failed)}",
                    logging.WARNING,
                    "no router answered (%s); retrying (up to every %.0fs) until one does",
                    "; ".join(f"{url}: {why}" for url, why in failed),
                    MAX_BACKOFF_S,
                )
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _register_here(self) -> str | None:
        """One registration with the current router: None when it is over (registered, or
        refused for good: :attr:`fatal`), else why not, in a few words."""
        router = self.router_url
        single = len(self.router_urls) == 1
        try:
            response = await self._client.post(
                f"{router}/v0/nodes/register",
                content=msgspec.json.encode(self.registration()),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            tls = tls_failure(exc)
            if tls is not None:
                if single:
                    self._report(
                        f"tls {tls}",
                        logging.ERROR,
                        "TLS to router %s failed (%s); give its CA with --router-ca-bundle; "
                        "retrying (up to every %.0fs)",
                        router,
                        tls,
                        MAX_BACKOFF_S,
                    )
                return f"TLS failed ({tls}; give its CA with --router-ca-bundle)"
            if single:
                self._report(
                    f"unreachable {type(exc).__name__}",
                    logging.WARNING,
                    "router %s not reachable (%s); retrying (up to every %.0fs) until it is",
                    router,
                    type(exc).__name__,
                    MAX_BACKOFF_S,
                )
            return type(exc).__name__
        if response.status_code == 200:
            reply = msgspec.json.decode(response.content, type=RegistrationReply)
            if self.settings.heartbeat_interval_s is None:
                self.interval_s = reply.heartbeat_interval_s
            if self._left is not None and self._left[0] != router:
                log.warning(
                    "router %s unreachable (%s); registered with %s as %s (heartbeat every %.1fs)",
                    self._left[0],
                    self._left[1],
                    router,
                    reply.node_id,
                    self.interval_s,
                )
            else:
                log.info(
                    "registered with router %s as %s (heartbeat every %.1fs)",
                    router,
                    reply.node_id,
                    self.interval_s,
                )
            self._left = None
            self._problem = None
            self.registered.set()
            return None
        if response.status_code in (401, 403):
            # Printed by `llmlb node` as it exits (one line, not logged twice).
            self.fatal = refusal(response, router, self.settings.id)
            log.debug("registration refused: %s", self.fatal)
            return None
        if single:
            self._report(
                f"http {response.status_code}",
                logging.ERROR,
                "router refused registration: HTTP %d %s; retrying (up to every %.0fs)",
                response.status_code,
                _router_message(response),
                MAX_BACKOFF_S,
            )
        return f"HTTP {response.status_code} {_router_message(response)}"

    async def _switch(self, reason: str) -> None:
        """The current router stopped answering (``reason``): register with the next one."""
        if self._left is None:
            self._left = (self.router_url, reason)
        self._problem = None
        self.registered.clear()
        self._next_router()
        await self.register()

    async def beat(self) -> None:
        replicas = len(self.router_urls) > 1
        try:
            response = await self._client.post(
                f"{self.router_url}/v0/nodes/heartbeat",
                content=msgspec.json.encode(self.heartbeat_message()),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            if replicas:
                await self._switch(tls_failure(exc) or type(exc).__name__)
                return
            self._report(
                f"heartbeat {type(exc).__name__}",
                logging.WARNING,
                "heartbeat to router %s failed (%s); still trying every %.1fs",
                self.router_url,
                type(exc).__name__,
                self.interval_s,
            )
            return
        if response.status_code == 200:
            reply = msgspec.json.decode(response.content, type=HeartbeatReply)
            if reply.reregister:
                log.info("router %s does not know this node (restarted?); re-registering", self.router_url)
                self._problem = None
                self.registered.clear()
                await self.register()
            else:
                self._report(None, logging.INFO, "heartbeats reach the router again")
        elif response.status_code in (401, 403):
            self._report(
                f"heartbeat {response.status_code}",
                logging.ERROR,
                "%s",
                refusal(response, self.router_url, self.settings.id),
            )
        elif response.status_code >= 500 and replicas:
            await self._switch(f"HTTP {response.status_code} {_router_message(response)}")
        else:
            self._report(
                f"heartbeat {response.status_code}",
                logging.WARNING,
                "heartbeat answered HTTP %d: %s",
                response.status_code,
                _router_message(response),
            )

    async def run(self) -> None:
        await self.register()
        while self.fatal is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._beat_now.wait()
            self._beat_now.clear()
            await self.beat()

    def beat_now(self) -> None:
        """Send the next heartbeat now, not at the next interval: a job ended early (its client
        left) and the router holds its slot until the node reports it gone. Calls made while a
        heartbeat is being sent give one more heartbeat right after it."""
        self._beat_now.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="llmlb-router-link")

    async def drain(self) -> None:
        """Tell the router to stop sending new work (the node finishes what it has)."""
        self.draining = True
        if not self.registered.is_set():
            return  # the registration in progress says draining=True
        try:
            response = await self._client.post(f"{self.router_url}/v0/nodes/{self.settings.id}/drain")
        except httpx.HTTPError as exc:
            log.warning("could not tell the router of the drain (%s)", type(exc).__name__)
            return
        if response.status_code != 200:
            log.warning(
                "router refused the drain: HTTP %d: %s", response.status_code, _router_message(response)
            )

    async def stop(self, *, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if deregister and self.registered.is_set():
            await self._deregister()
        await self._client.aclose()

    async def _deregister(self) -> None:
        try:
            response = await self._client.post(f"{self.router_url}/v0/nodes/{self.settings.id}/deregister")
        except httpx.TransportError as exc:
            # The router is gone or going (stopped with the node, e.g. `llmlb demo`): it takes the
            # node offline when heartbeats stop. Nothing for the operator to do.
            log.debug("router not reachable to deregister (%s); it will mark this node offline", exc)
            return
        if response.status_code in (200, 204):
            log.info("deregistered from router %s", self.router_url)
        elif response.status_code == 404:
            log.debug("router no longer lists this node; nothing to deregister")
        else:
            log.warning("could not deregister: HTTP %d: %s", response.status_code, _router_message(response))
