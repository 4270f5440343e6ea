"""Command line of cglcert: ``./cglcert COMMAND [options]``.

Subcommands are plugins: every module ``cglcert/commands/<name>.py`` defines
``register(subparsers)`` and is found at start with :func:`pkgutil.iter_modules`, so a new
command is a new file, never an edit here (see :mod:`cglcert.commands`).

Exit codes (the same for every command; :class:`cglcert.ExitCode`):

    0  ok: the command did what was asked and every check passed
    1  a check failed / not certified (e.g. ``coverage --check`` found gaps)
    2  usage error: bad command line or arguments; the message says what to do
    3  infrastructure error: the tool or its environment broke (missing or unreadable
       files, an invalid schema, a command module that cannot be imported)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from cglcert import CglcertError, ExitCode, __version__
from cglcert import commands as commands_pkg

PROG = "cglcert"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 2 and tell the user where to get help."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = f"run '{self.prog} --help' for the options"
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n{hint}\n")


def discover_commands() -> tuple[list[ModuleType], dict[str, str]]:
    """Import every command module; return (modules, {name: import error}) sorted by name."""
    modules: list[ModuleType] = []
    broken: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        except Exception:  # a half-written plugin must not take down the other commands
            broken[info.name] = traceback.format_exc(limit=-1).strip()
            continue
        if not callable(getattr(module, "register", None)):
            broken[info.name] = "the module defines no register(subparsers) function"
            continue
        modules.append(module)
    return modules, broken


def build_parser(
    modules: Sequence[ModuleType],
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[_Parser]]:
    """Build the top-level parser with one subparser per command module."""
    parser = _Parser(
        prog=PROG,
        description="Certify Linux kernels against the CGL asynchronous-event requirements.",
        epilog="Exit codes: 0 ok, 1 check failed / not certified, 2 usage error, "
        "3 infrastructure error. Run 'cglcert COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in modules:
        module.register(subparsers)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    """Run cglcert with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    modules, broken = discover_commands()
    parser, subparsers = build_parser(modules)

    wanted = next((a for a in args_list if not a.startswith("-")), None)
    if wanted in broken:
        print(f"{PROG}: command '{wanted}' cannot be loaded:\n{broken[wanted]}", file=sys.stderr)
        return ExitCode.INFRA
    for name, error in broken.items():
        print(f"{PROG}: warning: command module '{name}' skipped: "
              f"{error.splitlines()[-1]}", file=sys.stderr)

    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        choices = ", ".join(sorted(subparsers.choices)) or "none installed"
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (one of: {choices})\n"
              f"run '{PROG} --help' for the list, '{PROG} COMMAND --help' for its options",
              file=sys.stderr)
        return ExitCode.USAGE
    try:
        return int(func(args))
    except CglcertError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `./cglcert coverage | head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # keep the exit-time flush quiet
        return ExitCode.OK
