"""`tnbc`: one thin click command per stage. Parse flags, build the config, call one driver.

Heavy modules (cv2, TensorFlow) are imported inside the commands so `tnbc --help` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from tnbc_pipeline import __version__
from tnbc_pipeline.config import (Compression, InteriorTarget, Layout, LossName, ModelName, PeerName,
                                  PrecisionName, StainNorm, StrategyName, choices)
from tnbc_pipeline.cli_options import (alpha_sigma, check_folds, given, make_scoring, post_overrides,
                                       post_processing, seed_option, tuning_options)
from tnbc_pipeline.errors import TnbcError, one_line

log = logging.getLogger("tnbc_pipeline")


class _Group(click.Group):
    """Turns the project's own errors into one clear line and exit status 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TnbcError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        except click.UsageError as exc:  # a bad flag or value: one line too, naming the command
            where = exc.ctx.command.name if exc.ctx is not None and exc.ctx.parent is not None else "tnbc"
            raise click.ClickException(one_line(f"{where}: {exc.format_message()}")) from None
        except OSError as exc:  # disk full, permission denied, a file where a folder should be, ...
            where = exc.filename if exc.filename is not None else "file system"
            raise click.ClickException(one_line(f"{where}: {exc.strerror or exc}")) from None
        except KeyboardInterrupt:
            click.echo("interrupted; previous outputs are intact, rerun to continue", err=True)
            sys.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # pipeline order, not alphabetical


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tnbc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings only, no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """TNBC nuclei segmentation pipeline, one command per stage:

    \b
    fetch / synth -> dataset -> records -> train -> eval -> infer
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"progress": not quiet}


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("raw"), show_default=True,
              help="Folder to download into.")
@click.option("--url", help="Download address (default: Zenodo record 2579118, v1.1).")
@click.option("--md5", help="Expected MD5 (default: the published v1.1 digest).")
@click.option("--sha256", help="Expected SHA-256 (optional extra pin).")
@click.option("--size", type=int, help="Expected size in bytes (default: the published v1.1 size).")
@click.pass_obj
def fetch(obj: dict, out: Path, url: str | None, md5: str | None, sha256: str | None, size: int | None) -> None:
    """Download the release archive (resumable; size and digest verified)."""
    import dataclasses

    from tnbc_pipeline.data.fetch import Source, fetch as do_fetch

    source = dataclasses.replace(Source(), **given({"url": url, "md5": md5, "sha256": sha256, "size": size}))
    click.echo(do_fetch(out, source, progress=obj["progress"]))


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the release into.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Random seed of the synthetic images.")
@click.option("--size", type=click.IntRange(32, 4096), default=512, show_default=True, help="Image side in pixels.")
@click.option("--layout", type=click.Choice(["tnbc", "folders"]), default="tnbc", show_default=True,
              help="tnbc: OUT/TNBC_NucleiSegmentation/Slide_PP + GT_PP; folders: OUT/images, OUT/masks (instance "
                   "labels and binary) and OUT/groups.csv, as your own data would come.")
def synth(out: Path, seed: int, size: int, layout: str) -> None:
    """Write a synthetic H&E-like release (50 images, 11 patients) in the real layout or the own-data one."""
    from tnbc_pipeline.data.synth import write_folders, write_release

    click.echo((write_folders if layout == "folders" else write_release)(out, seed=seed, size=size))


@main.command()
@click.option("--raw", type=click.Path(path_type=Path), required=True,
              help="The release: zip archive, extracted folder, or a folder holding Slide_PP/ and GT_PP/; "
                   "or your own data (see --layout).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("dataset/TNBC"), show_default=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with [split] / [augment] tables (see configs/dataset.toml).")
@click.option("--alpha", type=float, multiple=True, help="Elastic alpha; repeat for several (replaces config).")
@click.option("--sigma", type=float, multiple=True, help="Elastic sigma; repeat for several (replaces config).")
@click.option("--stain", type=float, multiple=True,
              help="HED stain jitter strength of one offline `stain` variant; repeat for several (replaces config).")
@click.option("--seed", type=int, help="Augmentation seed.")
@click.option("--split-seed", type=int, help="Seed of the patient assignment.")
@click.option("--folds", type=int, help="Grouped k-fold by patient: number of folds.")
@click.option("--fold", type=int, help="Grouped k-fold: which fold (0-based) is the test set.")
@click.option("--mask-threshold", type=int, help="Accept non-binary masks: nucleus = value > threshold.")
@click.option("--layout", type=click.Choice(choices(Layout)),
              help="How RAW is laid out: tnbc (Slide_PP/ + GT_PP/), folders (images/ + masks/ [+ groups.csv]), "
                   "imagemask (the old train|valid|test/images + masks) [default: auto, by its folders].")
@click.option("--workers", type=click.IntRange(1, 256), help="Worker processes [default: all cores].")
@click.option("--force", is_flag=True, help="Re-render every item even if unchanged.")
@click.option("--verify", is_flag=True,
              help="Re-hash every kept file (else a file whose size, mtime and inode match the last build's "
                   ".stamps.json is trusted).")
@click.pass_obj
def dataset(obj: dict, raw: Path, out: Path, config_path: Path | None, alpha: tuple[float, ...],
            sigma: tuple[float, ...], stain: tuple[float, ...], seed: int | None, split_seed: int | None, folds: int | None,
            fold: int | None, mask_threshold: int | None, layout: str | None, workers: int | None, force: bool,
            verify: bool) -> None:
    """Split the release by patient, augment inside each split, write PNG pairs + manifest."""
    from tnbc_pipeline.config import DatasetConfig, load_config
    from tnbc_pipeline.data.dataset import build_dataset

    flags = {"augment.alpha": alpha, "augment.sigma": sigma, "augment.stain": stain, "seed": seed, "split.seed": split_seed,
             "split.folds": folds, "split.fold": fold, "mask_threshold": mask_threshold, "layout": layout}
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v not in (None, ())}
    cfg = load_config(DatasetConfig, config_path, overrides)
    if fold is not None and not cfg.split.folds:
        raise TnbcError(f"--fold {fold} needs --folds (or split.folds in the config): k-fold is off")
    summary = build_dataset(raw, out, cfg, workers=workers, force=force, progress=obj["progress"], verify=verify)
    if not summary.changed:
        click.echo(f"{out}: up to date ({sum(r['items'] for r in summary.rows.values())} items); nothing to do")
        return
    click.echo(f"{'split':<6} {'patients':>8} {'sources':>8} {'items':>6} {'rendered':>9} {'reused':>7}")
    for split, row in summary.rows.items():
        click.echo(f"{split:<6} {row['patients']:>8} {row['sources']:>8} {row['items']:>6} "
                   f"{row['rendered']:>9} {row['reused']:>7}")
    click.echo(f"deleted {summary.deleted} stale item(s); {summary.seconds:.1f} s -> {out}")


@main.command()
@click.option("--dataset", type=click.Path(path_type=Path), default=Path("dataset/TNBC"), show_default=True,
              help="A `tnbc dataset` output folder.")
@click.option("--out", type=click.Path(path_type=Path), help="Shard folder [default: DATASET/tfrecords].")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with the records keys (see configs/records.toml).")
@click.option("--shard-mb", type=float, help="Target shard size in MiB [default: 100].")
@click.option("--compression", type=click.Choice(choices(Compression)), help="Shard compression [default: none].")
@click.option("--verify", is_flag=True, help="Only check: re-hash every shard and parse every record.")
@click.option("--force", is_flag=True, help="Rebuild even if the dataset is unchanged.")
@click.pass_obj
def records(obj: dict, dataset: Path, out: Path | None, config_path: Path | None, shard_mb: float | None,
            compression: str | None, verify: bool, force: bool) -> None:
    """Pack the dataset into TFRecord shards + index.json (rebuilt only when the dataset changed)."""
    from tnbc_pipeline.config import RecordsConfig, load_config
    from tnbc_pipeline.data.records import build_records, verify_records

    out = out or dataset / "tfrecords"
    if verify:
        problems = verify_records(out, dataset, progress=obj["progress"])
        for line in problems:
            click.echo(f"BAD {line}", err=True)
        if problems:
            raise TnbcError(f"{len(problems)} bad shard(s) in {out}")
        click.echo(f"{out}: every shard matches the index and every record parses")
        return
    overrides = given({"shard_mb": shard_mb, "compression": compression})
    cfg = load_config(RecordsConfig, config_path, overrides)
    summary = build_records(dataset, out, cfg, force=force, progress=obj["progress"])
    if not summary.changed:
        click.echo(f"{out}: up to date with {dataset / 'manifest.json'}; nothing to do")
        return
    click.echo(f"{'split':<6} {'records':>8} {'shards':>7} {'MiB':>8}")
    for split, row in summary.rows.items():
        click.echo(f"{split:<6} {row['records']:>8} {row['shards']:>7} {row['bytes'] / 2**20:>8.1f}")
    click.echo(f"-> {out}")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML (configs/quick.toml, configs/tnbc.toml) or the old train_eval_infer.config (INI).")
@click.option("--records", type=click.Path(path_type=Path), default=Path("dataset/TNBC/tfrecords"), show_default=True)
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run folder [default: runs/<config name>].")
@click.option("--model", "model_name", type=click.Choice(choices(ModelName)), help="Model to build.")
@click.option("--interior", type=click.IntRange(0, 16),
              help="Add the interior channel (mask eroded by this many px) that splits touching nuclei; 0: off.")
@click.option("--interior-target", type=click.Choice(choices(InteriorTarget)),
              help="What the interior channel learns: the eroded core, or the depth in the nucleus capped at --interior px.")
@click.option("--stain-jitter", type=float, help="HED stain jitter sigma of every training crop (0: off).")
@click.option("--stain-norm", type=click.Choice(choices(StainNorm)), help="Stain normalisation as the first layer.")
@click.option("--epochs", type=int)
@click.option("--steps-per-epoch", type=int)
@click.option("--batch-size", type=int, help="Global batch size.")
@click.option("--patch", type=int, help="Training crop side in pixels.")
@click.option("--lr", type=float, help="Initial learning rate.")
@click.option("--loss", type=click.Choice(choices(LossName)))
@click.option("--seed", type=int)
@click.option("--strategy", type=click.Choice(choices(StrategyName)), help="multi_worker: TF_CONFIG, see README.")
@click.option("--precision", type=click.Choice(choices(PrecisionName)), help="auto: the faster measured here (README).")
@click.option("--jit/--no-jit", default=None, help="XLA (Keras drops it under op determinism).")
@click.option("--skip-bad-shards", is_flag=True, help="Leave out corrupted shards with a warning.")
@click.option("--force", is_flag=True, help="Start over even if the run folder holds a run.")
@click.pass_obj
def train(obj: dict, config_path: Path | None, records: Path, run_dir: Path | None, model_name: str | None,
          interior: int | None, interior_target: str | None, stain_jitter: float | None, stain_norm: str | None,
          epochs: int | None, steps_per_epoch: int | None, batch_size: int | None, patch: int | None,
          lr: float | None, loss: str | None, seed: int | None, strategy: str | None, precision: str | None,
          jit: bool | None, skip_bad_shards: bool, force: bool) -> None:
    """Train a U-Net on the shards into a run folder (resumes an interrupted run)."""
    from tnbc_pipeline.config import load_train_config
    from tnbc_pipeline.model.train import train as run_training

    flags = {"model.name": model_name, "model.interior": interior, "model.interior_target": interior_target,
             "stain_jitter": stain_jitter, "model.stain_norm": stain_norm, "epochs": epochs, "steps_per_epoch":
             steps_per_epoch, "batch_size": batch_size, "patch": patch, "lr": lr, "loss": loss, "seed": seed,
             "strategy": strategy, "precision": precision, "jit": jit}
    cfg = load_train_config(config_path, given(flags))
    run_dir = run_dir or Path("runs") / (config_path.stem if config_path else "default")
    done = run_training(records, run_dir, cfg, force=force, skip_bad=skip_bad_shards, progress=obj["progress"])
    best = done.get("best", {})
    click.echo(f"{run_dir}: best epoch {done['best_epoch']} of {done['epochs_run']}: "
               + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_")))


@main.command("eval")
@click.option("--run-dir", type=click.Path(path_type=Path), required=True, help="A trained run folder.")
@click.option("--records", type=click.Path(path_type=Path), default=Path("dataset/TNBC/tfrecords"), show_default=True)
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@post_processing
@tuning_options
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Average the 8 flips/rotations (measured: better on every CV fold; --no-tta is 8x faster).")
@click.option("--all-ops", is_flag=True, help="Score augmented copies too (default: original images only).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: RUN/eval_SPLIT].")
@click.pass_obj
def evaluate_command(obj: dict, run_dir: Path, records: Path, split: str, threshold: float | None,
                     min_area: int | None, instances: str | None, core_threshold: float | None, split_touching: bool,
                     tune_by: str, tune_on: str, tta: bool, all_ops: bool, out: Path | None) -> None:
    """Pixel (Dice, IoU, ...) and instance (AJI, F1@0.5, PQ) metrics of a run on a split."""
    from tnbc_pipeline.evaluation.evaluate import evaluate

    overrides = post_overrides(threshold, min_area, instances, core_threshold, split_touching)
    summary = evaluate(run_dir, records, split, overrides, tta, all_ops, out, obj["progress"], tune_by, tune_on)
    means = summary["mean_over_images"]
    post = summary["postprocess"]
    def how(name: str) -> str:
        return "given" if name in overrides else summary["postprocess_source"]

    click.echo(f"{split}: {summary['images']} image(s) of patients {' '.join(summary['patients'])}, "
               f"threshold {post['threshold']:.2f} ({how('threshold')}), min area {post['min_area']} "
               f"({how('min_area')}), min score {post['min_score']:g} ({how('min_score')}), nuclei by {post['instances']}"
               + (f" (core threshold {post['core_threshold']:.2f}, {how('core_threshold')})"
                  if post["instances"] == "interior" else ""))
    click.echo("  ".join(f"{k} {means[k]:.4f}" for k in ("dice", "iou", "aji", "f1", "pq", "precision", "recall")))
    click.echo(f"-> {out or run_dir / ('eval_' + split)}")


@main.command()
@click.option("--run-dir", type=click.Path(path_type=Path), required=True, help="A trained run folder.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of images (any size).")
@click.option("--slide", type=click.Path(path_type=Path, dir_okay=False),
              help="A whole slide (pyramidal TIFF, SVS, ...; extra 'slide') instead of --images: tiled, tissue only.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--masks", type=click.Path(path_type=Path), help="Truth masks (same stems): adds metrics.csv + comparison.png.")
@click.option("--region", help="--slide: only this region, 'x,y,w,h' in level-0 px [default: the whole slide].")
@click.option("--level", type=click.IntRange(0), default=0, show_default=True, help="--slide: pyramid level to read.")
@click.option("--model-mpp", type=float, default=0.25, show_default=True,
              help="--slide: µm/px the model was trained at (TNBC: 40x); other slide pixel sizes are rescaled to it.")
@post_processing
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Average the 8 flips/rotations (measured: better on every CV fold; --no-tta is 8x faster).")
@click.option("--mpp", type=float, help="Microns per pixel of the images (--slide: overrides its metadata): "
                                        "adds areas in um^2 to nuclei.csv.")
@click.pass_obj
def infer(obj: dict, run_dir: Path, images: Path | None, slide: Path | None, out: Path, masks: Path | None,
          region: str | None, level: int, model_mpp: float, threshold: float | None, min_area: int | None,
          instances: str | None, core_threshold: float | None, split_touching: bool, tta: bool,
          mpp: float | None) -> None:
    """Masks, probabilities and overlays for any folder of images; or the nuclei of a whole slide."""
    from tnbc_pipeline.evaluation.tables import MaskScorer
    from tnbc_pipeline.inference.infer import infer as run_infer

    if (images is None) == (slide is None):
        raise TnbcError("give exactly one of --images and --slide")
    if slide is None and (region is not None or level):
        raise TnbcError("--region and --level apply to --slide only")
    if slide is not None and masks is not None:
        raise TnbcError("--masks applies to --images only (score a slide's regions as images)")
    overrides = post_overrides(threshold, min_area, instances, core_threshold, split_touching)
    if slide is not None:
        from tnbc_pipeline.inference.slide import infer_slide

        record = infer_slide(run_dir, slide, out, overrides, tta, region, level, mpp, model_mpp, obj["progress"])
        click.echo(f"{record['nuclei']} nuclei in {record['tiles']} tile(s) "
                   f"({record['megapixels_per_s']:.2f} MP/s) -> {out}")
        return
    scorer = MaskScorer(masks) if masks is not None else None
    record = run_infer(run_dir, images, out, overrides, tta, on_image=scorer, progress=obj["progress"], mpp=mpp)
    if scorer is not None:
        scorer.write(out)
        click.echo("  ".join(f"{k} {v:.4f}" for k, v in scorer.means().items()))
    post = record["postprocess"]
    click.echo(f"{record['nuclei']} nuclei; threshold {post['threshold']:.2f} ({record['source']}), "
               f"separated by {post['instances']} -> {out}")


@main.command()
@click.option("--raw", type=click.Path(path_type=Path), required=True,
              help="The release (zip or folder), or your own data (layout: auto, or `layout` in --dataset-config).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("cv/default"), show_default=True)
@click.option("--folds", type=click.IntRange(2, 11), default=4, show_default=True, help="Patient folds.")
@click.option("--fold", "only", type=int, multiple=True, help="Run only these folds (repeatable; 0-based).")
@click.option("--dataset-config", type=click.Path(path_type=Path, dir_okay=False), help="Dataset TOML.")
@click.option("--train-config", type=click.Path(path_type=Path, dir_okay=False), help="Train TOML or old INI.")
@click.option("--epochs", type=int, help="Override the train config's epochs (the time budget per fold).")
@seed_option
@click.option("--model", "model_name", type=click.Choice(choices(ModelName)),
              help="Override the train config's model (the zoo; `make zoo` runs each).")
@post_processing
@tuning_options
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Average the 8 flips/rotations when scoring (measured: better on every CV fold).")
@click.option("--workers", type=click.IntRange(1, 256), help="Dataset worker processes.")
@click.option("--force", is_flag=True, help="Retrain folds whose run was made with other settings (else refused).")
@click.option("--peer", "peers", type=click.Choice(choices(PeerName)), multiple=True,
              help="Also train and score this peer on each fold, same records and budget (repeatable): "
                   "unet_plain (no interior channel, no stain jitter, threshold 0.5) or stardist (extra 'peers').")
@click.pass_obj
def cv(obj: dict, raw: Path, out: Path, folds: int, only: tuple[int, ...], dataset_config: Path | None,
       train_config: Path | None, epochs: int | None, seed: int | None, model_name: str | None, threshold: float | None,
       min_area: int | None, instances: str | None, core_threshold: float | None, split_touching: bool, tune_by: str,
       tune_on: str, tta: bool, workers: int | None, force: bool, peers: tuple[str, ...]) -> None:
    """Grouped k-fold cross-validation by patient: dataset, records, train, eval per fold; resumable."""
    from tnbc_pipeline.config import DatasetConfig, load_config, load_train_config
    from tnbc_pipeline.experiments.cv import REPORTED, cross_validate

    check_folds(only, folds)
    scoring = make_scoring(threshold, min_area, instances, core_threshold, split_touching, tta, tune_by, tune_on)
    data_cfg = load_config(DatasetConfig, dataset_config)
    train_cfg = load_train_config(train_config, given({"epochs": epochs, "seed": seed, "model.name": model_name}))
    summary = cross_validate(raw, out, folds, data_cfg, train_cfg, list(only) or None, scoring, workers,
                             progress=obj["progress"], force=force, peers=tuple(dict.fromkeys(peers)))
    for name, s in [("ours", summary), *summary.get("peers", {}).items()]:
        if peers:
            click.echo(name)
        for k in REPORTED:
            click.echo(f"{k:<10} {s[k]['mean']:.4f} +- {s[k]['sd']:.4f}  " + " ".join(f"{v:.3f}" for v in s[k]["folds"]))
    click.echo(f"-> {out}")


@main.command()
@click.option("--raw", type=click.Path(path_type=Path), required=True,
              help="The release (zip or folder), or your own data (layout: auto, or `layout` in --dataset-config).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("study/default"), show_default=True)
@click.option("--folds", type=click.IntRange(2, 11), default=4, show_default=True, help="Patient folds.")
@click.option("--fold", "only", type=int, multiple=True, help="Folds to run (repeatable; 0-based) [default: all].")
@click.option("--elastic", type=str, multiple=True, callback=alpha_sigma,
              help="ALPHA:SIGMA of one elastic arm; repeat [default: 110:8 400:10 1300:8].")
@click.option("--dataset-config", type=click.Path(path_type=Path, dir_okay=False),
              help="Dataset TOML: seed, split, PNG settings, and the 'full' arm's augmentation.")
@click.option("--train-config", type=click.Path(path_type=Path, dir_okay=False), help="Train TOML or old INI.")
@click.option("--epochs", type=int, help="Override the train config's epochs (the budget of every run).")
@seed_option
@post_processing
@tuning_options
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Average the 8 flips/rotations when scoring (measured: better on every CV fold).")
@click.option("--workers", type=click.IntRange(1, 256), help="Dataset worker processes.")
@click.option("--force", is_flag=True, help="Retrain arms whose run was made with other settings (else refused).")
@click.pass_obj
def study(obj: dict, raw: Path, out: Path, folds: int, only: tuple[int, ...], elastic: tuple[tuple[float, float], ...],
          dataset_config: Path | None, train_config: Path | None, epochs: int | None, seed: int | None,
          threshold: float | None, min_area: int | None, instances: str | None, core_threshold: float | None,
          split_touching: bool, tune_by: str, tune_on: str, tta: bool, workers: int | None, force: bool) -> None:
    """Augmentation study: none / flips+rotations / + each elastic setting / + distortion and shrink."""
    from tnbc_pipeline.config import DatasetConfig, load_config, load_train_config
    from tnbc_pipeline.experiments.study import DEFAULT_ELASTIC, augmentation_study

    check_folds(only, folds)
    scoring = make_scoring(threshold, min_area, instances, core_threshold, split_touching, tta, tune_by, tune_on)
    data_cfg = load_config(DatasetConfig, dataset_config)
    train_cfg = load_train_config(train_config, given({"epochs": epochs, "seed": seed}))
    summary = augmentation_study(raw, out, folds, list(only) or list(range(folds)), data_cfg, train_cfg,
                                 elastic or DEFAULT_ELASTIC, scoring, workers, progress=obj["progress"], force=force)
    click.echo(f"{'arm':<20} {'dice':>6} {'aji':>6} {'f1':>6} {'pq':>6}  regen s  elastic mean px")
    for arm in summary["settings"]["arms"]:
        a = summary[arm]
        click.echo(f"{arm:<20} " + " ".join(f"{a[k]['mean']:6.3f}" for k in ("dice", "aji", "f1", "pq"))
                   + f"  {sum(a['regen_seconds']) / len(a['regen_seconds']):7.1f}  {a['elastic_mean_disp_px']}")
    click.echo(f"-> {out}")


if __name__ == "__main__":
    main(prog_name=os.path.basename(sys.argv[0]))
