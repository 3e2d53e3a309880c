"""Shared fixtures: the synthetic checkpoint (made once per session), real servers on loopback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.models import (
    DEMO_MODEL,
    FLUX_CACHE,
    FLUX_LORA,
    FLUX_MODEL,
    LORA_CACHE,
    MODEL_CACHE,
    SD1_LORA,
    ImageSystem,
    cache_lock,
)
from tests.support.nginx import NginxBalancer
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.redis import RedisServer, private_redis_server
from tests.support.servers import Proc, create_key, node_proc, router_proc


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """A models dir holding the synthetic SD1 tiny-UNet checkpoint as model ``demo``."""
    from llmlb_node.stable_diffusion.tools.demo_checkpoint import demo_model_is_complete, write_demo_model

    folder = MODEL_CACHE / DEMO_MODEL
    with cache_lock():
        if not demo_model_is_complete(folder):
            write_demo_model(folder)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def flux_models_dir() -> Path:
    """A models dir holding the synthetic multi-file FLUX.1 as model ``flux-schnell-tiny``:
    ``flux1-schnell.safetensors`` (tiny DiT), ``clip_l.safetensors``, ``ae.safetensors``,
    ``taef1.safetensors``, no model.toml (about 431 MB, written once)."""
    from llmlb_node.stable_diffusion.tools.demo_flux import demo_flux_is_complete, write_demo_flux

    folder = FLUX_CACHE / FLUX_MODEL
    with cache_lock():
        if not demo_flux_is_complete(folder):
            write_demo_flux(folder)
    return FLUX_CACHE


@pytest.fixture(scope="session")
def lora_dir() -> Path:
    """A LoRA folder with ``sd1-demo-lora.safetensors`` (for the SD1 demo model) and
    ``flux-tiny-lora.safetensors`` (for flux-schnell-tiny)."""
    from llmlb_node.stable_diffusion.tools.demo_lora import lora_is_complete, write_flux_lora, write_sd1_lora

    with cache_lock():
        for name, family, write in ((SD1_LORA, "sd1", write_sd1_lora), (FLUX_LORA, "flux", write_flux_lora)):
            path = LORA_CACHE / f"{name}.safetensors"
            if not lora_is_complete(path, family):
                write(path)
    return LORA_CACHE


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped at teardown, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def router(tmp_path: Path, procs: list[Proc]) -> Proc:
    proc = router_proc(tmp_path, env={"LLMLB_NODE_TIMEOUT_S": "2"})
    procs.append(proc)
    return proc.start().wait_healthy()


@pytest.fixture
def node_key(router: Proc) -> str:
    return create_key(router.url, ["node"], name="node")


@pytest.fixture
def api_key(router: Proc) -> str:
    return create_key(router.url, ["api"], name="client")


@pytest.fixture
def sd_node(tmp_path: Path, router: Proc, node_key: str, models_dir: Path, procs: list[Proc]) -> Proc:
    """A real node process serving the synthetic checkpoint, registered with ``router``."""
    proc = node_proc(tmp_path, router.url, models_dir, node_key, name="sd-node-1", extra=["--threads", "2"])
    procs.append(proc)
    proc.start().wait_healthy(60).wait_online(router.url)
    return proc


@pytest.fixture(scope="session")
def image_system(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ImageSystem]:
    tmp = tmp_path_factory.mktemp("image-system")
    started: list[Proc] = []
    try:
        router = router_proc(
            tmp,
            env={
                "LLMLB_PLUGIN__IMAGES__URL_TTL_MINUTES": "0.05",
                "LLMLB_PLUGIN__IMAGES__DEFAULT_RESPONSE_FORMAT": "b64_json",
            },
        )
        started.append(router)
        router.start().wait_healthy()
        node = node_proc(
            tmp,
            router.url,
            models_dir,
            create_key(router.url, ["node"]),
            name="sd-shared",
            extra=["--threads", "2"],
        )
        started.append(node)
        node.start().wait_healthy(60).wait_online(router.url)
        yield ImageSystem(router, node, create_key(router.url, ["api"]))
    finally:
        for proc in reversed(started):
            proc.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder: ``unit`` (pure functions, no I/O), ``integration``
    (in-process servers on loopback) or ``system`` (real processes, stable-diffusion.cpp, the
    llama server) or ``browser`` (the dashboard in headless Chromium). ``make test-unit`` runs
    the first kind alone."""
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "integration", "system", "browser"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """This worker's private PostgreSQL server (tests/support/postgres.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on :func:`postgres`, for one test."""
    return postgres.database()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """This worker's private Redis server (tests/support/redis.py)."""
    with private_redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of database 0 on :func:`redis_server`, for one test: the server is started again
    if an earlier test left it down, and flushed, so no test sees another's keys (each xdist
    worker has its own server)."""
    redis_server.up()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def nginx_balancer() -> Iterator[Callable[..., NginxBalancer]]:
    """Starts nginx in front of router replicas: ``nginx_balancer(["127.0.0.1:PORT", ...])``
    returns a started :class:`NginxBalancer` (its ``url`` answers), with the upstreams'
    ``max_fails`` (1) and ``fail_timeout`` ("2s"). Every one started is stopped at teardown."""
    with ExitStack() as stack:

        def start(upstreams: Sequence[str], *, max_fails: int = 1, fail_timeout: str = "2s") -> NginxBalancer:
            balancer = NginxBalancer(upstreams, max_fails=max_fails, fail_timeout=fail_timeout)
            return stack.enter_context(balancer)

        yield start


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """A test that runs a command in-process (``main(["node", ...])``) sets up logging on
    stderr, which is capsys's or pytest's capture, closed after the test: the root logger's
    handlers and level are put back, so that servers in threads of later tests do not write
    to a closed stream ("--- Logging error ---" in the output)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
