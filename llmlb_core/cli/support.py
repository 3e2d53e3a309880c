"""What the ``llmlb`` commands share, the core's and those plugins add (``llmlb node``): the
log format, and options whose default comes from a settings struct.

Such an option shows the struct's default in ``--help``, but only a value given on the command
line (or through the option's own environment variable) overrides the settings: the
environment and the config file still apply when the flag is left out (:func:`given`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
import msgspec
from click.core import ParameterSource

from llmlb_core.server import log_format

# Where a value counts as the operator's, not the option's default.
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` as ``fmt``: ``text`` or ``json`` (``llmlb_core.server.log_format``)."""
    log_format.configure(level, fmt)


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


# --- command-line helpers (options from settings, clean errors) ----------------------------
CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}
LOG_LEVEL_CHOICE = click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False)


class OperatorError(Exception):
    """An ordinary mistake (router down, wrong key, port taken): ``llmlb`` prints it as one line,
    ``llmlb: <message>``, and exits with ``exit_code``; the traceback only with ``--debug``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def settings_option(
    *decls: str,
    struct: type[msgspec.Struct],
    field: str,
    env_prefix: str,
    help: str,
    env: str | None = None,
    **attrs: Any,
) -> Any:
    """A ``click.option`` for settings field ``field``: its default is the struct's (shown in
    ``--help``), its help names the field's environment variable (``env``: another text for it),
    read by the settings loader, not by click: use :func:`given` for the flags that override
    the settings."""
    return click.option(
        *decls,
        field,
        default=default_of(struct, field),
        help=f"{help}  [env var: {env or env_prefix + field.upper()}]",
        **attrs,
    )


def click_envvars(command: click.Command) -> set[str]:
    """Every environment variable that ``command`` and its subcommands read through click."""
    names: set[str] = set()
    for param in command.params:
        envvar = param.envvar
        names.update([envvar] if isinstance(envvar, str) else envvar or ())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= click_envvars(sub)
    return names
