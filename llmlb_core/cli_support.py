"""What the ``llmlb`` commands share, the core's and those plugins add (``llmlb node``): the
log format, and options whose default comes from a settings struct.

Such an option shows the struct's default in ``--help``, but only a value given on the command
line (or through the option's own environment variable) overrides the settings: the
environment and the config file still apply when the flag is left out (:func:`given`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import click
import msgspec
from click.core import ParameterSource

# Where a value counts as the operator's, not the option's default.
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per heartbeat and upstream call is noise at INFO.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def default_of(struct: type[msgspec.Struct], name: str) -> Any:
    """The default of settings field ``name`` (None: it has none)."""
    for field in msgspec.structs.fields(struct):
        if field.name == name:
            if field.default is not msgspec.NODEFAULT:
                return field.default
            if field.default_factory is not msgspec.NODEFAULT:
                return field.default_factory()
            return None
    raise KeyError(f"{struct.__name__} has no field {name!r}")


def given(ctx: click.Context, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the operator gave (command line or the option's environment variable)."""
    return {name: value for name, value in params.items() if ctx.get_parameter_source(name) in _GIVEN}
