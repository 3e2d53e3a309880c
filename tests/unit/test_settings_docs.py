"""docs/configuration.md keeps up with the settings: every key of the router's, a node's and each
built-in plugin's and runtime's settings has its row, with its variable and its default."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from llmlb_core.cli.support import default_of
from llmlb_core.config.settings import RouterSettings
from llmlb_core.plugins import load_plugins
from llmlb_node.plugins import load_runtime_types
from llmlb_node.settings import NodeSettings
from tests.support.servers import REPO

DOC = (REPO / "docs" / "configuration.md").read_text()


def _section(heading: str) -> str:
    start = DOC.index(heading)
    following = re.search(r"^#{2,3} ", DOC[start + len(heading) :], re.MULTILINE)
    return DOC[start : start + len(heading) + following.start()] if following else DOC[start:]


def _shown(value: Any) -> str | None:
    """A default as the docs write it (None: not checked)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int | float):
        return f"`{value!r}`"
    return None


def _sections() -> list[tuple[str, type[msgspec.Struct], str]]:
    plugins = load_plugins(None, third_party=False).capabilities
    runtimes = load_runtime_types(load_entry_points=False)
    return [
        ("## Router settings", RouterSettings, "LLMLB_"),
        ("## Node settings", NodeSettings, "LLMLB_NODE_"),
        *((f"### `[plugin.{n}]`", c.settings, f"LLMLB_PLUGIN__{n.upper()}__") for n, c in plugins.items()),
        *(
            (f"### `[runtime.{n}]`", t.settings, f"LLMLB_NODE_RUNTIME__{n.upper()}__")
            for n, t in runtimes.items()
        ),
    ]


@pytest.mark.parametrize(("heading", "struct", "env_prefix"), _sections(), ids=lambda v: str(v)[:30])
def test_every_setting_has_its_row_with_its_variable_and_default(
    heading: str, struct: type[msgspec.Struct], env_prefix: str
) -> None:
    section = _section(heading)
    for field in msgspec.structs.fields(struct):
        if field.encode_name in ("plugin", "runtime"):
            continue
        row = next(
            (line for line in section.splitlines() if line.startswith(f"| `{field.encode_name}` |")), None
        )
        assert row is not None, f"{heading}: no row for {field.encode_name}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        env = f"`{env_prefix}{field.name.upper()}`"
        settable = not isinstance(default_of(struct, field.name), list | dict) or field.name == "runtimes"
        assert env in cells[1] or not settable or "(file" in cells[1], (heading, row)
        shown = _shown(default_of(struct, field.name))
        assert shown is None or any(cell.startswith(shown) for cell in cells), (heading, row, shown)
