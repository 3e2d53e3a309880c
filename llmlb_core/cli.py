"""The ``llmlb`` command: serve (router), node, demo-model, keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per heartbeat and upstream call is noise at INFO.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_serve(args: argparse.Namespace) -> int:
    from llmlb_core.app import create_app
    from llmlb_core.plugins import PluginError
    from llmlb_core.serving import run
    from llmlb_core.settings import SettingsError, load_settings
    from llmlb_core.slow_clients import ClientTimeouts
    from llmlb_core.tls import check_server_cert

    try:
        settings = load_settings(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"llmlb: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    try:
        check_server_cert(settings.tls_cert, settings.tls_key, flags="tls_cert/tls_key")
        app = create_app(settings)
    except (PluginError, SettingsError) as exc:
        print(f"llmlb: refusing to start: {exc}", file=sys.stderr)
        return 2
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_timeouts=ClientTimeouts.of(settings),
    )
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from llmlb_core.serving import run
    from llmlb_core.settings import SettingsError
    from llmlb_core.slow_clients import ClientTimeouts
    from llmlb_core.tls import check_server_cert
    from llmlb_node.app import create_node_app
    from llmlb_node.plugins import RuntimePluginError
    from llmlb_node.settings import node_settings_from_env

    settings = node_settings_from_env(
        router_url=args.router,
        port=args.port,
        host=args.host,
        models_dir=args.models_dir,
        api_key=args.api_key,
        name=args.name,
        node_id=args.node_id,
        advertise_host=args.advertise_host,
        heartbeat_interval_s=args.heartbeat_interval,
        idle_unload_s=args.idle_unload,
        threads=args.threads,
        runtimes=args.runtime or None,
        weights_preference=args.weights,
        runtime_settings=_upstream_runtime_settings(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        router_ca_bundle=args.router_ca_bundle,
    )
    _setup_logging(args.log_level)
    if not settings.api_key:
        print("llmlb node: a node-scope API key is required (--api-key or LLMLB_API_KEY)", file=sys.stderr)
        return 2
    try:
        check_server_cert(settings.tls_cert, settings.tls_key)
        app = create_node_app(settings)
    except (RuntimePluginError, SettingsError) as exc:
        print(f"llmlb node: {exc}", file=sys.stderr)
        return 2
    run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        drain=app.state.node_drain,
        graceful_timeout_s=900,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        client_timeouts=ClientTimeouts.of(settings),
    )
    return 0


UPSTREAM_KINDS = ("llama_cpp", "vllm", "ollama", "whisper_cpp", "generic")


def _upstream_runtime_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """The ``openai_compatible`` runtime's table from the ``--upstream*`` flags (None: unused)."""
    if not args.upstream:
        return None
    table: dict[str, Any] = {"url": args.upstream, "kind": args.upstream_kind}
    key = args.upstream_key or os.environ.get("LLMLB_UPSTREAM_KEY")
    if key:
        table["api_key"] = key
    if args.upstream_model:
        table["models"] = args.upstream_model
    if args.upstream_capability:
        table["capabilities"] = args.upstream_capability
    if args.upstream_slots:
        table["slots"] = args.upstream_slots
    return {"openai_compatible": table}


def cmd_demo_model_write(target: Path, *, force: bool = False) -> None:
    """Write the synthetic checkpoint into ``target`` unless it is already complete."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llmlb_node.stable_diffusion.demo_checkpoint import demo_model_is_complete, write_demo_model

    if demo_model_is_complete(target) and not force:
        print(f"demo model present in {target}")
        return
    started = time.monotonic()
    tty = sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not tty,
    ) as progress:
        task = progress.add_task("writing tensors", total=None)
        last_log = [0.0]

        def report(step: int, total: int, label: str) -> None:
            progress.update(task, completed=step, total=total, description=f"writing {label[:40]}")
            if not tty and (time.monotonic() - last_log[0] > 2 or step == total):
                last_log[0] = time.monotonic()
                print(f"  demo-model: {step}/{total} tensors", file=sys.stderr, flush=True)

        write_demo_model(target, progress=report)
    print(f"demo model written to {target} in {time.monotonic() - started:.1f}s")


def cmd_demo_model(args: argparse.Namespace) -> int:
    cmd_demo_model_write(Path(args.dir), force=args.force)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from llmlb_node.stable_diffusion.model_folder import read_profile, weight_files
    from llmlb_node.stable_diffusion.quantize import quantize

    _setup_logging("info")
    folder = Path(args.model_dir)
    sources = [p for p in weight_files(folder, read_profile(folder)) if p.suffix != ".gguf"]
    if not sources:
        print(f"llmlb quantize: no .safetensors/.ckpt weights in {folder}", file=sys.stderr)
        return 2
    started = time.monotonic()
    out = quantize(sources[0], args.type)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f}s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmlb_core.demo import run_demo

    _setup_logging("warning")
    return run_demo(
        host=args.host,
        port=args.port,
        node_port=args.node_port,
        data_dir=Path(args.data_dir),
        models_dir=Path(args.models_dir),
    )


def _admin_client(args: argparse.Namespace) -> httpx.Client:
    key = args.admin_key or os.environ.get("LLMLB_ADMIN_KEY")
    if not key:
        raise SystemExit("llmlb keys: an admin key is required (--admin-key or LLMLB_ADMIN_KEY)")
    return httpx.Client(
        base_url=args.router.rstrip("/"), headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _print_response(response: httpx.Response) -> int:
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.is_success else 1


def cmd_keys(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        if args.keys_cmd == "create":
            body: dict[str, Any] = {"name": args.name, "scopes": args.scope or ["api"]}
            if args.expires_in:
                body["expires_in_s"] = args.expires_in
            if args.node:
                body["node_id"] = args.node
            return _print_response(client.post("/v0/keys", json=body))
        if args.keys_cmd == "list":
            return _print_response(client.get("/v0/keys"))
        return _print_response(client.delete(f"/v0/keys/{args.id}"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--config", help="TOML config file (or env LLMLB_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="run a node that serves models to a router")
    node.add_argument("--router", help="router URL (default http://127.0.0.1:8080)")
    node.add_argument("--host")
    node.add_argument("--port", type=int)
    node.add_argument("--advertise-host", help="address the router uses to reach this node")
    node.add_argument("--models-dir")
    node.add_argument("--api-key", help="node-scope key (or env LLMLB_API_KEY)")
    node.add_argument("--name")
    node.add_argument("--node-id")
    node.add_argument("--runtime", action="append", help="runtime type to start (repeatable)")
    node.add_argument("--heartbeat-interval", type=float)
    node.add_argument("--idle-unload", type=float, help="unload a model idle this many seconds")
    node.add_argument("--threads", type=int)
    node.add_argument("--weights", choices=["auto", "safetensors", "gguf"])
    node.add_argument("--log-level", default="info")
    node.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (or env LLMLB_NODE_TLS_CERT)")
    node.add_argument("--tls-key", help="private key of --tls-cert (or env LLMLB_NODE_TLS_KEY)")
    node.add_argument("--router-ca-bundle", help="PEM CA bundle to verify an HTTPS router against")
    node.add_argument("--upstream", metavar="URL", help="front this OpenAI-compatible server")
    node.add_argument("--upstream-key", help="API key the upstream server wants (or env LLMLB_UPSTREAM_KEY)")
    node.add_argument("--upstream-kind", default="generic", choices=list(UPSTREAM_KINDS))
    node.add_argument("--upstream-model", action="append", help="serve only this model (repeatable)")
    node.add_argument("--upstream-capability", action="append", help="flag of its models (repeatable)")
    node.add_argument("--upstream-slots", type=int, help="requests sent to it at once (default 4)")
    node.set_defaults(func=cmd_node)

    demo = sub.add_parser("demo-model", help="write the synthetic random-weight SD checkpoint")
    demo.add_argument("dir")
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(func=cmd_demo_model)

    quant = sub.add_parser("quantize", help="write a quantised GGUF next to a model's weights")
    quant.add_argument("model_dir")
    quant.add_argument("--type", default="q8_0", choices=["q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f16"])
    quant.set_defaults(func=cmd_quantize)

    demo_all = sub.add_parser("demo", help="router + one local node serving the demo model")
    demo_all.add_argument("--host", default="127.0.0.1")
    demo_all.add_argument("--port", type=int, default=8080)
    demo_all.add_argument("--node-port", type=int, default=8090)
    demo_all.add_argument("--data-dir", default="./llmlb-data")
    demo_all.add_argument("--models-dir", default="./models")
    demo_all.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="manage API keys (admin)")
    keys.add_argument("--router", default=os.environ.get("LLMLB_ROUTER", "http://127.0.0.1:8080"))
    keys.add_argument("--admin-key")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=["api", "node", "admin"])
    create.add_argument("--expires-in", type=float, help="lifetime in seconds")
    create.add_argument("--node", metavar="NODE_ID", help="bind a node-scope key to this node id")
    keys_sub.add_parser("list")
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("id")
    keys.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    from llmlb_core.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:  # e.g. a --name outside the node-name charset
        print(f"llmlb: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
