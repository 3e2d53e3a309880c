"""The node's link to its router: register, heartbeat, re-register, drain, deregister.

Registration retries with capped backoff until the router answers (it may start after the
node). A heartbeat the router answers with ``reregister`` (it restarted and lost the node's
credential) or 404 triggers a new registration at once.
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
    Accelerator,
    Heartbeat,
    HeartbeatReply,
    JobProgress,
    ModelAdvert,
    NodeRegistration,
    RegistrationReply,
)
from llmlb_core.tls import client_ssl_context, tls_failure
from llmlb_node.runtime import Runtime
from llmlb_node.settings import NodeSettings

log = logging.getLogger("llmlb.node.agent")

MAX_BACKOFF_S = 5.0


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
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.token = token
        self._accelerators = accelerators
        self._client = httpx.AsyncClient(
            base_url=settings.router_url.rstrip("/"),
            headers={"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {},
            timeout=httpx.Timeout(10.0, connect=3.0),
            verify=client_ssl_context(settings.router_ca_bundle, what="--router-ca-bundle"),
        )
        self.interval_s = settings.heartbeat_interval_s or 10.0
        self.registered = asyncio.Event()
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._last_models: list[ModelAdvert] = []
        self._beat_now = asyncio.Event()

    def models(self) -> list[ModelAdvert]:
        return [m for runtime in self.runtimes for m in runtime.models()]

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
            loaded.extend(load.loaded_models)
            jobs.extend(load.jobs)
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
        backoff = 0.2
        while True:
            try:
                response = await self._client.post(
                    "/v0/nodes/register",
                    content=msgspec.json.encode(self.registration()),
                    headers={"content-type": "application/json"},
                )
                if response.status_code == 200:
                    reply = msgspec.json.decode(response.content, type=RegistrationReply)
                    if self.settings.heartbeat_interval_s is None:
                        self.interval_s = reply.heartbeat_interval_s
                    log.info(
                        "registered with router %s as %s (heartbeat every %.1fs)",
                        self.settings.router_url,
                        reply.node_id,
                        self.interval_s,
                    )
                    self.registered.set()
                    return
                log.error(
                    "router refused registration: HTTP %d %s", response.status_code, response.text[:300]
                )
            except httpx.HTTPError as exc:
                tls = tls_failure(exc)
                if tls is not None:
                    log.error(
                        "TLS to router %s failed (%s); give its CA with --router-ca-bundle; "
                        "retrying in %.1fs",
                        self.settings.router_url,
                        tls,
                        backoff,
                    )
                else:
                    log.warning(
                        "router %s not reachable (%s); retrying in %.1fs",
                        self.settings.router_url,
                        type(exc).__name__,
                        backoff,
                    )
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def beat(self) -> None:
        try:
            response = await self._client.post(
                "/v0/nodes/heartbeat",
                content=msgspec.json.encode(self.heartbeat_message()),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("heartbeat failed: %s", type(exc).__name__)
            return
        if response.status_code == 200:
            reply = msgspec.json.decode(response.content, type=HeartbeatReply)
            if reply.reregister:
                log.info("router does not know this node (restarted?); re-registering")
                self.registered.clear()
                await self.register()
        elif response.status_code in (401, 403):
            log.error("router refused heartbeat: HTTP %d %s", response.status_code, response.text[:300])
        else:
            log.warning("heartbeat answered HTTP %d", response.status_code)

    async def run(self) -> None:
        await self.register()
        while True:
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
        try:
            await self._client.post(f"/v0/nodes/{self.settings.id}/drain")
        except httpx.HTTPError as exc:
            log.warning("could not announce drain: %s", type(exc).__name__)

    async def stop(self, *, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if deregister and self.registered.is_set():
            try:
                await self._client.post(f"/v0/nodes/{self.settings.id}/deregister")
                log.info("deregistered from router")
            except httpx.HTTPError as exc:
                log.warning("could not deregister: %s", type(exc).__name__)
        await self._client.aclose()
