"""Command-line interface: ``hwprune <command>``.

Each command module under ``hwprune.cli`` exposes ``COMMANDS`` (a list of click commands) and
imports heavy libraries only inside command bodies, so ``hwprune --help`` stays fast. A
``HwpruneError`` raised anywhere becomes a one-line ``Error: ...`` and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from hwprune import __version__
from hwprune.base.errors import HwpruneError

__all__ = ["main", "cli"]

# One line per command module; each module defines COMMANDS.
_COMMAND_MODULES: tuple[str, ...] = ("profile", "bench", "export", "pipeline", "select", "groups", "bundle", "latency")


class _Group(click.Group):
    """Click group that turns HwpruneError into a clean exit code 2."""

    def invoke(self, ctx: click.Context):
        """Run the command; an ``HwpruneError`` becomes one line on stderr and exit code 2."""
        try:
            return super().invoke(ctx)
        except HwpruneError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hwprune")
def cli() -> None:
    """hwprune: prune a network for a hardware profile and prove the speed-up on the runtime."""


for _name in _COMMAND_MODULES:
    for _cmd in importlib.import_module(f"hwprune.cli.{_name}").COMMANDS:
        cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="hwprune")
