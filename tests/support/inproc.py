"""Router and nodes as in-process apps served over real loopback HTTP (uvicorn threads)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmlb_core.config.settings import load_settings
from llmlb_core.router.app import create_app
from llmlb_node.app import create_node_app
from llmlb_node.settings import NodeSettings
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key, free_port, node_status, wait_until


def start_router(data_dir: Path, plugins: Iterable[object] = (), **settings: Any) -> ThreadServer:
    cfg = load_settings(
        None, environ={}, data_dir=str(data_dir), load_entry_points=False, admin_key=ADMIN_KEY, **settings
    )
    return ThreadServer(create_app(cfg, extra_plugins=plugins)).start()


def start_node(
    router_url: str,
    plugins: Iterable[object],
    *,
    name: str,
    runtimes: list[str],
    models_dir: Path | None = None,
    **settings: Any,
) -> ThreadServer:
    port = free_port()
    cfg = NodeSettings(
        router_url=router_url,
        api_key=create_key(router_url, ["node"], name=name),
        port=port,
        name=name,
        runtimes=runtimes,
        heartbeat_interval_s=0.2,
        models_dir=str(models_dir or "/nonexistent"),
        **settings,
    )
    server = ThreadServer(create_node_app(cfg, extra_plugins=plugins), port=port).start()
    wait_until(lambda: node_status(router_url, name) == "online", 10, f"{name} online")
    return server
