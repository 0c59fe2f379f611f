"""`liveml <service> serve`: run one liveml service in the foreground.

A port that cannot be listened on (in use, or not this machine's) is the caller's to
change: one line naming it and the flag and variable that set it, exit 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from services.common.config import settings_options
from services.gateway.settings import GatewaySettings
from services.registry.settings import RegistrySettings
from services.trainer.settings import TrainerSettings
from services.worker.settings import WorkerSettings


@contextmanager
def _ports_said() -> Iterator[None]:
    from services.common.server import CannotListen  # not at import: `liveml models` stays quick

    try:
        yield
    except CannotListen as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


registry_app = typer.Typer(
    help="The registry: models, versions, rollouts, audit.", no_args_is_help=True
)


@registry_app.command("serve")
@settings_options(RegistrySettings)
def registry_serve(settings: RegistrySettings) -> None:
    """Run the registry (control plane) until SIGTERM."""
    from services.registry import app as registry
    from services.registry.secrets import SecretsError

    try:
        with _ports_said():
            raise typer.Exit(registry.serve(settings))
    except (SecretsError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None


worker_app = typer.Typer(help="Inference workers (onnxruntime, hot swap).", no_args_is_help=True)


@worker_app.command("serve")
@settings_options(WorkerSettings)
def worker_serve(settings: WorkerSettings) -> None:
    """Run a worker: --model-dir DIR (standalone) or --registry ADDR (hot swap)."""
    from services.worker import app as worker

    try:
        with _ports_said():
            raise typer.Exit(worker.serve(settings))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


gateway_app = typer.Typer(
    help="The gateway: one front door that routes to workers.", no_args_is_help=True
)


@gateway_app.command("serve")
@settings_options(GatewaySettings)
def gateway_serve(settings: GatewaySettings) -> None:
    """Run a gateway that routes V2 requests by the registry's rollouts."""
    from services.gateway import app as gateway

    try:
        with _ports_said():
            raise typer.Exit(gateway.serve(settings))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


trainer_app = typer.Typer(
    help="The trainer: retrains models by their training policies.", no_args_is_help=True
)


@trainer_app.command("serve")
@settings_options(TrainerSettings)
def trainer_serve(settings: TrainerSettings) -> None:
    """Run a trainer: evaluate triggers, claim runs, fit, gate, register."""
    from services.trainer import app as trainer

    try:
        with _ports_said():
            raise typer.Exit(trainer.serve(settings))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
