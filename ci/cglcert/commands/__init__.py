"""cglcert subcommands, one module per command, discovered at start by :mod:`cglcert.cli`.

To add a command, drop a module ``ci/cglcert/commands/<name>.py`` here; never edit
``cli.py``. The module must define::

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("name", help="one line", description="...")
        parser.add_argument(...)
        parser.set_defaults(func=run)

    def run(args: argparse.Namespace) -> int:
        ...  # return a cglcert.ExitCode (0 ok, 1 check failed, 2 usage, 3 infrastructure)

``run`` may raise :class:`cglcert.UsageError` or :class:`cglcert.InfraError`; the CLI prints
the message and exits 2 or 3. Modules whose name starts with ``_`` are not commands.
"""
