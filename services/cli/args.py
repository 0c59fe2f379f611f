"""Names, arguments and option parsing shared by the registry's command groups.

A model is written `iris` or `models/iris`; KEY=VALUE, VERSION=PERCENT and durations
(90s, 15m, 12h, 30d) are parsed here so every command reads them the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated

import typer

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of tables.")]
ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model name, e.g. iris.")]
NumberArg = Annotated[int, typer.Argument(metavar="NUMBER", min=1, help="Version number.")]

# --- names -------------------------------------------------------------------------


def model_id(model: str) -> str:
    return model.removeprefix("models/")


def model_name(model: str) -> str:
    return f"models/{model_id(model)}"


def version_name(model: str, number: int) -> str:
    return f"{model_name(model)}/versions/{number}"


def rollout_name(model: str) -> str:
    return f"{model_name(model)}/rollout"


def token_name(token: str) -> str:
    return token if token.startswith("tokens/") else f"tokens/{token}"


# --- parsing options -----------------------------------------------------------------


def split_pair(value: str, flag: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=flag)
    return key, rest


def parse_pairs(values: Iterable[str] | None, flag: str) -> dict[str, str]:
    """KEY=VALUE options as a dict (a later key wins)."""
    return dict(split_pair(value, flag) for value in values or ())


def parse_metrics(values: Iterable[str] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in parse_pairs(values, "--metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"{key}: {value!r} is not a number", param_hint="--metric"
            ) from None
    return metrics


def parse_version_number(text: str, flag: str) -> int:
    """A version number written `3` or `v3`."""
    digits = text.strip().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise typer.BadParameter(f"{text!r} is not a version number", param_hint=flag)
    return int(digits)


def parse_traffic(values: Iterable[str] | None, flag: str) -> list[rpb.TrafficTarget]:
    """VERSION=PERCENT options as traffic targets; the registry checks the sums."""
    targets: dict[int, rpb.TrafficTarget] = {}
    for value in values or ():
        version, percent = split_pair(value, flag)
        number = parse_version_number(version, flag)
        if not percent.isdigit() or int(percent) > 100:
            raise typer.BadParameter(f"percent {percent!r} is not 0..100", param_hint=flag)
        # Refused rather than merged: two shares for one version is a typo, not a wish.
        if number in targets:
            raise typer.BadParameter(f"version {number} is given twice", param_hint=flag)
        targets[number] = rpb.TrafficTarget(version=number, percent=int(percent))
    return list(targets.values())


_TTL = re.compile(r"(\d+)([smhd])")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_ttl(text: str) -> timedelta:
    match = _TTL.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter(
            f"{text!r}: expected e.g. 90s, 15m, 12h or 30d", param_hint="--ttl"
        )
    return timedelta(**{_TTL_UNITS[match[2]]: int(match[1])})
