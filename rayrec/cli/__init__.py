"""The ``rayrec`` command line.

Each subcommand lives in its own module and is imported only when run, so ``rayrec plugins``
does not pay for importing torch and Ray.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from rayrec.errors import RayrecError

# command name -> "module:function"
COMMANDS = {
    "plugins": "rayrec.cli.plugins_cmd:plugins",
    "train": "rayrec.cli.train_cmd:train",
    "recommend": "rayrec.cli.recommend_cmd:recommend",
    "evaluate": "rayrec.cli.evaluate_cmd:evaluate",
    "serve": "rayrec.cli.serve_cmd:serve",
    "quickstart": "rayrec.cli.quickstart_cmd:quickstart",
    "synthetic": "rayrec.cli.synthetic_cmd:synthetic",
    "index": "rayrec.cli.index_cmd:index",
    "experiments": "rayrec.cli.experiments_cmd:experiments",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        module_name = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module_name) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module_name, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rayrec")
def cli() -> None:
    """rayrec: train two-tower recommenders on Ray and serve them in real time."""


def let_ray_workers_import_this_rayrec() -> None:
    """Ray puts the driver's working directory first on its workers' ``sys.path``. Run from the
    folder that holds a clone named ``rayrec/`` (no ``__init__.py``), a worker imports that
    folder as a namespace package ``rayrec`` in place of an editable install, which is found
    by a finder Python asks only after the path; its ``rayrec.plugins`` is then the clone's
    ``plugins/`` folder. A regular package wins over a namespace folder wherever it is on the
    path, so naming this package's parent in ``PYTHONPATH``, which a local Ray's processes
    inherit, lets the workers find it. Nothing changes where no such folder is in the way, or
    where the package is found on the path anyway (a regular install)."""
    import rayrec

    parent = str(Path(rayrec.__file__).resolve().parent.parent)
    on_path = {os.path.abspath(entry or ".") for entry in sys.path}
    shadow = Path.cwd() / "rayrec"
    if parent in on_path or not shadow.is_dir() or (shadow / "__init__.py").exists():
        return
    os.environ["PYTHONPATH"] = os.pathsep.join([parent, *filter(None, [os.environ.get("PYTHONPATH")])])


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line and exit 1, never a traceback."""
    let_ray_workers_import_this_rayrec()
    try:
        cli.main(args=argv, prog_name="rayrec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except RayrecError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
