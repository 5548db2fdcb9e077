"""Options and checks several `tnbc` commands share: post-processing flags, fold lists, elastic settings.

Light imports only (click and the config's Literal types), so `tnbc --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tnbc_pipeline.config import DEFAULT_TUNE_BY, DEFAULT_TUNE_ON, InstanceMethod, TuneBy, TuneOn, choices
from tnbc_pipeline.errors import TnbcError


def post_processing(command: Callable) -> Callable:
    """The post-processing options eval, infer, cv and study share; each given one overrides that field
    of the run's saved post-processing (RUN/postprocess.json), the rest stay as saved (or chosen on valid)."""
    options = [
        click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Mask probability threshold [default: chosen on valid, saved as RUN/postprocess.json]."),
        click.option("--min-area", type=click.IntRange(0, 10_000),
                     help="Remove predicted objects under this many pixels [default: saved, else 30]."),
        click.option("--instances", type=click.Choice(["auto", *choices(InstanceMethod)]),
                     help="How touching predicted nuclei are separated [default: saved, else auto = the interior "
                     "channel when the model has one, else components]."),
        click.option("--core-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Interior probability threshold of a nucleus core [default: saved, else 0.5]."),
        click.option("--split-touching", is_flag=True,
                     help="Alias of --instances watershed (kept from earlier versions)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def tuning_options(command: Callable) -> Callable:
    """--tune-by and --tune-on of the commands that choose post-processing (eval, cv, study)."""
    command = click.option("--tune-on", type=click.Choice(choices(TuneOn)), default=DEFAULT_TUNE_ON,
                           show_default=True, help="The originals the post-processing is chosen on: the valid "
                           "patients', or the train patients' too (seen in training; BENCHMARKS.md §1r).")(command)
    return click.option("--tune-by", type=click.Choice(choices(TuneBy)), default=DEFAULT_TUNE_BY, show_default=True,
                        help="What the post-processing fields not given are chosen to maximise "
                             "(mean over the images they are chosen on).")(command)


def seed_option(command: Callable) -> Callable:
    """--seed of the commands that train per fold (cv, study): the train config's seed, for run-to-run noise."""
    return click.option("--seed", type=click.IntRange(0, 2**32 - 1),
                        help="Override the train config's seed (run-to-run noise).")(command)


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave (not None), by name: the overrides of a config."""
    return {k: v for k, v in flags.items() if v is not None}


def post_overrides(threshold: float | None, min_area: int | None, instances: str | None, core_threshold: float | None,
               split_touching: bool) -> dict[str, Any]:
    """The PostProcess fields the user gave, by name."""
    if split_touching:
        if instances not in (None, "watershed"):
            raise TnbcError(f"--split-touching is --instances watershed; it contradicts --instances {instances}")
        instances = "watershed"
    return given({"threshold": threshold, "min_area": min_area, "instances": None if instances == "auto" else instances,
                  "core_threshold": core_threshold})


def check_folds(only: tuple[int, ...], folds: int) -> None:
    for i in only:
        if not 0 <= i < folds:
            raise TnbcError(f"--fold {i}: must be in [0, {folds})")


def make_scoring(threshold: float | None, min_area: int | None, instances: str | None, core_threshold: float | None,
                 split_touching: bool, tta: bool, tune_by: str, tune_on: str):
    from tnbc_pipeline.experiments.cv import Scoring

    overrides = post_overrides(threshold, min_area, instances, core_threshold, split_touching)
    return Scoring(overrides, tta, tune_by, tune_on)


def alpha_sigma(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    out = []
    for value in values:
        try:
            alpha, sigma = (float(v) for v in value.split(":"))
        except ValueError:
            raise click.BadParameter(f"'{value}' is not ALPHA:SIGMA (e.g. 110:8)") from None
        if alpha <= 0 or sigma <= 0:
            raise click.BadParameter(f"'{value}': alpha and sigma must be > 0")
        out.append((alpha, sigma))
    return tuple(out)
