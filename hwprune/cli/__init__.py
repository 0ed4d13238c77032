"""Command-line interface: ``hwprune <command>``.

Each command module under ``hwprune.cli`` exposes ``COMMANDS`` (a list of click commands) and
imports heavy libraries only inside command bodies, so ``hwprune --help`` stays fast. Every
failure is ONE line on stderr (``Error: ...``), never a traceback:

* a ``HwpruneError`` raised anywhere, an ``OSError`` (a file the system refused), or a usage
  error of click (unknown option, bad value, missing argument): exit code 2;
* Ctrl-C: ``Interrupted``, with how to continue, exit code 130;
* anything else is a bug: one line naming it, exit code 1 (``HWPRUNE_TRACEBACK=1`` shows the traceback).

The working directory is on ``sys.path`` (after the installed packages), so ``--model
mymodels:build`` finds ``./mymodels.py`` as ``python -m`` would.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from hwprune import __version__
from hwprune.base.errors import HwpruneError

__all__ = ["main", "cli", "one_line"]

# One line per command module; each module defines COMMANDS.
_COMMAND_MODULES: tuple[str, ...] = ("profile", "bench", "export", "pipeline", "select", "groups", "bundle", "latency")
EXIT_USER = 2  # a problem with the user's input, files or environment
EXIT_BUG = 1  # an unexpected exception (a bug of hwprune)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``; `` and runs of whitespace collapsed."""
    return "; ".join(" ".join(ln.split()) for ln in str(text).splitlines() if ln.strip())


def _usage_hint(exc: click.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f" (see '{ctx.command_path} --help')"
    return ""


class _Group(click.Group):
    """Click group whose every failure is one line on stderr (module docstring: exit codes)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; errors become one line and an exit code (module docstring)."""
        handler = _ConsoleHandler()  # this invocation's console; library use stays silent
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("hwprune")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if ctx.params.get("quiet") else logging.INFO)

        def restore() -> None:
            logger.removeHandler(handler)
            logger.setLevel(level)

        ctx.call_on_close(restore)
        try:
            return super().invoke(ctx)
        except HwpruneError as exc:
            click.echo(f"Error: {one_line(str(exc))}", err=True)
            ctx.exit(EXIT_USER)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            name = ctx.invoked_subcommand or "the command"
            hint = " (run it again with --resume to continue)" if name in ("train", "run") else ""
            click.echo(f"\nInterrupted: hwprune {name} stopped{hint}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or one_line(str(exc))}", err=True)
            ctx.exit(EXIT_USER)
        except Exception as exc:  # a bug: one line unless asked for the traceback
            if os.environ.get("HWPRUNE_TRACEBACK"):
                raise
            click.echo(f"Error: internal error {type(exc).__name__}: {one_line(str(exc))} (a bug in hwprune; "
                       "HWPRUNE_TRACEBACK=1 shows the traceback)", err=True)
            ctx.exit(EXIT_BUG)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Click's ``main`` with usage errors printed as one line (``Error: ... (see '... --help')``)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare 'hwprune' / 'hwprune profile': the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}{_usage_hint(exc)}", err=True)
            sys.exit(EXIT_USER if isinstance(exc, click.UsageError) else exc.exit_code)
        except click.Abort:
            click.echo("Interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)


# Loggers whose INFO lines are progress a user wants to see (per-epoch lines, export, timing, steps);
# every logger's warnings are shown.
_PROGRESS_LOGGERS = ("hwprune.training.loop", "hwprune.training.checkpoint", "hwprune.pipeline")


class _ConsoleHandler(logging.Handler):
    """One line per hwprune log record on stderr; on a terminal written above any progress bar."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Warnings of every module; INFO only of the progress loggers."""
        return record.levelno >= logging.WARNING or record.name.startswith(_PROGRESS_LOGGERS)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record (tqdm.write keeps a live progress bar below the line)."""
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname.capitalize()}: {msg}"
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except Exception:  # never let logging break a command
            self.handleError(record)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hwprune")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no per-epoch lines).")
def cli(quiet: bool) -> None:
    """hwprune: prune a network for a hardware profile and prove the speed-up on the runtime."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


for _name in _COMMAND_MODULES:
    for _cmd in importlib.import_module(f"hwprune.cli.{_name}").COMMANDS:
        cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="hwprune")
