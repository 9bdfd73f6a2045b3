"""The `suntool` command line: a thin typer app over the library.

Each subcommand lives in `suntool.commands.<name>` (the repo's `commands/` folder) and
only maps flags onto one library call and prints the result. Importing this module and
the command modules imports neither torch nor transformers, so `suntool --help` is
instant. User errors (`SuntoolError`) print as one red line and exit with code 2.
"""

from __future__ import annotations

import sys

import typer

SUBCOMMANDS = ("split", "finetune", "quantize", "eval", "serve", "bench", "deploy", "simulate", "generate", "info")


def build_app() -> typer.Typer:
    from suntool.commands import bench, deploy, finetune, generate, info, quantize, serve, simulate, split
    from suntool.commands import eval as eval_cmd

    app = typer.Typer(
        name="suntool",
        help="Split LLMs into prefill and decode halves, fine-tune the task half, share the other.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for module in (split, finetune, quantize, eval_cmd, serve, bench, deploy, simulate, generate, info):
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    from suntool.errors import SuntoolError

    app = build_app()
    try:
        app(args=argv, prog_name="suntool", standalone_mode=True)
    except SuntoolError as err:
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {err}", markup=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
