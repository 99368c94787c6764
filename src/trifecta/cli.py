"""The `trifecta` command: one sub-command group per package.

Each package keeps its commands in its own `cli.py` and imports heavy libraries (torch,
transformers, scipy) inside the command bodies, so that `trifecta --help` stays fast.
Expected failures (`TrifectaError`, invalid files) print one line and exit with code 2.
"""

from __future__ import annotations

import sys

import typer
import yaml
from pydantic import ValidationError
from typer.exceptions import TyperException

from trifecta.core.cli_options import unreachable_database
from trifecta.core.errors import TrifectaError, Unavailable, invalid_input_from

app = typer.Typer(
    name="trifecta",
    help="Run and scale the Industriverse Trifecta for many tenants (capsules).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Sub-command groups and top-level commands, one line per package (keep this block sorted).
from trifecta.cognitive.cli import cognitive_app, models_app  # noqa: E402
from trifecta.cognitive.serving.cli import serve_command  # noqa: E402
from trifecta.context.cli import context_app  # noqa: E402
from trifecta.edge.cli import edge_app  # noqa: E402
from trifecta.fleet.cli import capsule_app, fleet_app, plan_command, size_command  # noqa: E402
from trifecta.generative.cli import generative_app  # noqa: E402
from trifecta.orchestrator.cli import run_command  # noqa: E402
from trifecta.serve.cli import serve_command as serve_all_command  # noqa: E402
from trifecta.serve.federation_cli import (  # noqa: E402
    down_command,
    env_app,
    status_command,
    up_command,
)
from trifecta.serve.keys_cli import keys_app  # noqa: E402
from trifecta.tensorlogic.cli import tl_app  # noqa: E402

app.add_typer(capsule_app, name="capsule")
app.add_typer(cognitive_app, name="cognitive")
cognitive_app.command("serve")(serve_command)
app.add_typer(context_app, name="context")
app.add_typer(edge_app, name="edge")
app.add_typer(fleet_app, name="fleet")
app.add_typer(generative_app, name="generative")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.command("plan")(plan_command)
app.command("run")(run_command)
app.command("serve")(serve_all_command)
app.add_typer(env_app, name="env")
app.command("up")(up_command)
app.command("down")(down_command)
app.command("status")(status_command)
app.command("size")(size_command)
app.add_typer(tl_app, name="tl")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"trifecta: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:  # click hands back typer.Exit(code) here
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except TyperException as exc:  # usage errors: Typer prints usage and the one-line reason
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            _fail(exc.format_message())
        sys.exit(exc.exit_code)
    except Unavailable as exc:
        _fail(exc.one_line(), 1)
    except TrifectaError as exc:
        _fail(exc.one_line())
    except ValidationError as exc:
        _fail(invalid_input_from(exc).one_line())
    except yaml.YAMLError as exc:
        _fail(f"malformed YAML: {str(exc).splitlines()[0]}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a database that does not answer: one line naming database_url
        unreachable = unreachable_database(exc)
        if unreachable is None:
            raise
        _fail(unreachable.one_line())


if __name__ == "__main__":
    main()
