"""docs/operations.md stays true: its systemd units pass ``systemd-analyze verify`` and its
config examples load with the settings loaders (a renamed setting fails here, not on a server)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from llmlb_core.config.settings import load_settings
from llmlb_node.settings import load_node_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
DOC_EXECUTABLE = "/opt/llmlb/bin/llmlb"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_a_router_and_a_node_unit() -> None:
    units = blocks("ini")
    assert len(units) == 2
    assert "llmlb serve" in units[0] and "llmlb node" in units[1]
    # A node drains on SIGTERM: systemd must wait for it, and not loop on exit 2 (a config error).
    assert re.search(r"^TimeoutStopSec=(\d+)$", units[1], re.M)
    assert all("RestartPreventExitStatus=2" in unit for unit in units)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The doc's units run the venv's llmlb; verify them against this venv's (it must exist and be
    # executable for systemd-analyze to accept ExecStart).
    llmlb = Path(sys.executable).with_name("llmlb")
    assert llmlb.exists()
    paths = []
    for name, unit in zip(("llmlb-router", "llmlb-node"), blocks("ini"), strict=True):
        path = tmp_path / f"{name}.service"
        path.write_text(unit.replace(DOC_EXECUTABLE, str(llmlb)))
        paths.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    # Lines about the host (no systemd running here, missing users) are not the unit's fault.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and any(p.rsplit("/", 1)[1] in line for p in paths)
    ]
    assert problems == [], result.stderr


def test_node_config_example_loads(tmp_path: Path) -> None:
    (example,) = [b for b in blocks("toml") if "[runtime.stable_diffusion]" in b]
    path = tmp_path / "node.toml"
    path.write_text(example)
    settings = load_node_settings(path, environ={})
    assert settings.node_id == "gpu-1"
    assert settings.base_url == "http://10.0.0.21:8090"
    assert (
        settings.runtime_settings["stable_diffusion"] == tomllib.loads(example)["runtime"]["stable_diffusion"]
    )


def test_router_data_dir_variable_of_the_unit_is_a_setting(tmp_path: Path) -> None:
    (router_unit, _) = blocks("ini")
    name, value = re.findall(r"^Environment=(LLMLB_\w+)=(.*)$", router_unit, re.M)[0]
    settings = load_settings(None, environ={name: str(tmp_path / "data")})
    assert settings.data_dir == str(tmp_path / "data") and value == "/var/lib/llmlb"
