"""The stable_diffusion runtime's commands, added to ``llmlb`` through the core's
``llmlb_register_commands`` hook (the ``stable_diffusion`` entry point of ``llmlb.plugins``):
``demo-model`` writes a synthetic model (SD1 checkpoint or split FLUX.1 folder), ``quantize``
a GGUF copy of a model's weights, and ``demo`` runs a router and a node serving the synthetic
model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from llmlb_core.api import hookimpl
from llmlb_node.stable_diffusion.tools.demo import run_demo, write_demo_model_with_progress
from llmlb_node.stable_diffusion.tools.quantize import GGUF_TYPES

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}


@click.command(name="demo-model", context_settings=CONTEXT_SETTINGS, short_help="Write a synthetic model.")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--family",
    type=click.Choice(["sd1", "flux"]),
    default="sd1",
    help="sd1: one checkpoint + TAESD + model.toml (~850 MB); flux: FLUX.1 split into "
    "flux1-schnell / clip_l / ae / taef1 files as downloaded, no model.toml (~431 MB)",
)
@click.option("--force", is_flag=True, help="write it again even if complete")
def demo_model(directory: Path, family: str, force: bool) -> int:
    """Write a synthetic random-weight model into DIR (a model folder)."""
    write_demo_model_with_progress(directory, force=force, family=family)
    return 0


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Write a quantised GGUF copy of a model.")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--type", "output_type", type=click.Choice(GGUF_TYPES), default="q8_0", help="GGUF type")
def quantize(model_dir: Path, output_type: str) -> int:
    """Write a quantised GGUF copy of a model's weights.

    The GGUF is written next to the weights; the node then chooses one (--weights)."""
    from llmlb_node.stable_diffusion.models.model_folder import read_profile, weight_files
    from llmlb_node.stable_diffusion.tools.quantize import quantize as write_gguf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    sources = [p for p in weight_files(model_dir, read_profile(model_dir)) if p.suffix != ".gguf"]
    if not sources:
        raise click.UsageError(f"no .safetensors/.ckpt weights in {model_dir}")
    started = time.monotonic()
    out = write_gguf(sources[0], output_type)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f}s")
    return 0


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Run a router and a node on a demo model.")
@click.option("--host", default="127.0.0.1", help="address of the router")
@click.option("--port", type=int, default=8080, help="port of the router")
@click.option("--node-port", type=int, default=8090, help="port of the node")
@click.option("--data-dir", default="./llmlb-data", type=click.Path(path_type=Path), help="router data")
@click.option("--models-dir", default="./models", type=click.Path(path_type=Path), help="node models")
def demo(host: str, port: int, node_port: int, data_dir: Path, models_dir: Path) -> int:
    """Run a router and a node serving a synthetic model, to try llmlb.

    Makes the demo model in MODELS_DIR/demo if missing, starts `llmlb serve` and `llmlb node`,
    prints an API key and examples, and runs until Ctrl-C."""
    return run_demo(host=host, port=port, node_port=node_port, data_dir=data_dir, models_dir=models_dir)


COMMANDS: tuple[click.Command, ...] = (demo, demo_model, quantize)


@hookimpl
def llmlb_register_commands(cli: click.Group) -> None:
    for command in COMMANDS:
        cli.add_command(command)
