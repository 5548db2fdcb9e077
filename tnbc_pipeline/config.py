"""Stage configuration: frozen dataclasses, loaded from TOML, overridden by CLI flags, saved as JSON.

The loader (config_io.py, re-exported here) is generic over the dataclasses: unknown keys and wrong types
are errors naming the file and the key, and each dataclass validates its own ranges in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# the loader lives in config_io; the stages import it from here, with the dataclasses it loads
from tnbc_pipeline.config_io import (LATER, config_hash, from_dict, identity_dict, load_config,  # noqa: F401
                                     merge, to_dict)
from tnbc_pipeline.errors import TnbcError

SPLITS = ("train", "valid", "test")

# Every named choice, written once: the dataclasses check against these and the click choices derive
# from them (`choices(LossName)`), so a name cannot drift between the config and the command line.
PngStrategy = Literal["rle", "default", "filtered", "huffman", "fixed"]
PngFilter = Literal["up", "sub", "none", "avg", "paeth", "adaptive"]  # adaptive: libpng tries all per row
Compression = Literal["none", "gzip"]
# How `tnbc dataset --raw DIR` reads DIR (data/layouts.py); auto tells the layouts apart by their folders.
Layout = Literal["auto", "tnbc", "folders", "imagemask"]
ModelName = Literal["unet", "unet_seed", "attention_unet", "multires_unet", "unet3plus", "swin_unet", "efficient_unet",
                    "deeplabv3plus"]
EncoderWeights = Literal["none", "imagenet"]
StainNorm = Literal["none", "macenko"]
InteriorTarget = Literal["core", "distance"]
FIXED_STRIDE = {"efficient_unet": 32, "deeplabv3plus": 16}  # encoder models: their output stride
LossName = Literal["bce", "dice", "bce_dice", "bce_dice_gap", "iou", "bce_iou", "focal", "tversky"]
OptimizerName = Literal["adam", "adamw"]
# plateau: ReduceLROnPlateau + EarlyStopping, the best epoch kept; cosine: lr -> min_lr, no early stop, last epoch kept
ScheduleName = Literal["plateau", "cosine"]
StrategyName = Literal["auto", "one_device", "mirrored", "multi_worker"]
PrecisionName = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
TuneBy = Literal["aji", "f1", "pq", "dice"]  # what the post-processing chosen on valid maximises (mean over images)
DEFAULT_TUNE_BY: TuneBy = "aji"
# the originals the post-processing is chosen on: the valid patients, or with the train patients' too (in-sample
# for the model, four times as many images; BENCHMARKS.md §1r)
TuneOn = Literal["valid", "valid+train"]
DEFAULT_TUNE_ON: TuneOn = "valid"
# the splits the weights are fit on: train, or the valid patients too (the valid split then only chooses the
# post-processing, in-sample; cosine only: early stopping on images it trains on would be meaningless)
TrainOn = Literal["train", "train+valid"]
PeerName = Literal["unet_plain", "stardist"]  # models `tnbc cv --peer` trains and scores beside ours
InstanceMethod = Literal["components", "watershed", "interior"]
Channel = Literal["mask", "interior"]


def choices(literal: Any) -> tuple[str, ...]:
    """The names a Literal type allows, in their written order."""
    return typing.get_args(literal)


def split_names(choice: str) -> tuple[str, ...]:
    """The splits a `+`-joined choice (TrainOn, TuneOn) names: "train+valid" -> ("train", "valid")."""
    return tuple(choice.split("+"))


# The output-channel map: a model's channels are a prefix of this order (ModelConfig.channels), so the
# mask is always channel MASK_CHANNEL; losses, metrics, callbacks, eval and infer all read it from here.
CHANNEL_ORDER: tuple[Channel, ...] = choices(Channel)
MASK_CHANNEL = CHANNEL_ORDER.index("mask")


def _check_choice(value: Any, literal: Any, key: str, what: str = "value") -> None:
    if value not in choices(literal):
        raise TnbcError(f"{key}: unknown {what} '{value}' (expected {' | '.join(choices(literal))})")


SEED_LIMIT = 2**32  # seeds go to NumPy's legacy seeding (via Keras), which takes [0, 2**32)


def _check_numbers(cfg: Any, prefix: str = "") -> None:
    """Every float of a config (alone or in a tuple) is finite -- nan passes every range check and inf
    reaches OpenCV -- and every seed is in [0, SEED_LIMIT)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise TnbcError(f"{prefix}{f.name}: must be a finite number, got {v}")
        if f.name == "seed" and not 0 <= value < SEED_LIMIT:
            raise TnbcError(f"{prefix}seed must be in [0, 2**32), got {value}")


@dataclass(frozen=True)
class SplitConfig:
    """How patients (never images) are assigned to train/valid/test."""

    seed: int = 0  # seeds the default assignment and the valid draw of k-fold
    test_fraction: float = 0.2  # default mode: share of source images to put in test (whole patients)
    valid_fraction: float = 0.1  # default and k-fold mode: share of source images for valid
    train: tuple[str, ...] = ()  # explicit mode: patients for train (empty: every unlisted patient)
    valid: tuple[str, ...] = ()  # explicit mode: patients for valid
    test: tuple[str, ...] = ()  # explicit mode (any list given): patients for test
    folds: int = 0  # > 0: grouped k-fold by patient; test = fold `fold` (0-based)
    fold: int = 0  # which fold is the test set when folds > 0

    def __post_init__(self) -> None:
        _check_numbers(self, "split.")
        for name in ("test_fraction", "valid_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TnbcError(f"split.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.test_fraction + self.valid_fraction >= 1.0:
            raise TnbcError("split.test_fraction + split.valid_fraction must leave patients for train")
        if self.folds < 0 or self.folds == 1:
            raise TnbcError(f"split.folds must be 0 (off) or >= 2, got {self.folds}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise TnbcError(f"split.fold must be in [0, {self.folds}), got {self.fold}")
        if not self.folds and self.fold:
            raise TnbcError(f"split.fold = {self.fold} needs split.folds (--folds): k-fold is off")
        if self.folds and (self.train or self.valid or self.test):
            raise TnbcError("split: give either explicit patient lists or folds, not both")
        seen: dict[str, str] = {}
        for split in SPLITS:
            for patient in getattr(self, split):
                if patient in seen:
                    raise TnbcError(f"split: patient {patient} is listed in both {seen[patient]} and {split}")
                seen[patient] = split


@dataclass(frozen=True)
class AugmentConfig:
    """Which variants each source image gets; every op warps image and mask with one transform."""

    alpha: tuple[float, ...] = (110.0,)  # elastic strength (px); one variant per (alpha, sigma) pair
    sigma: tuple[float, ...] = (8.0, 10.0)  # elastic smoothness: Gaussian std of the field (px)
    flips: bool = True  # horizontal and vertical flips
    rotations: tuple[float, ...] = tuple(float(a) for a in range(30, 360, 30))  # degrees; reflected borders
    distort: tuple[float, ...] = (0.01, 0.02, 0.03)  # smooth grid distortion: max shift / image size
    shrink: tuple[float, ...] = (0.7, 0.8, 0.9)  # zoom-out ratio about the centre; reflected borders
    stain: tuple[float, ...] = ()  # HED stain jitter strength sigma, one `stain` variant each (data/stain.py)
    splits: tuple[str, ...] = ("train", "valid")  # splits that get variants; the others keep originals only

    def __post_init__(self) -> None:
        _check_numbers(self, "augment.")
        for name in ("alpha", "sigma"):
            if any(value <= 0 for value in getattr(self, name)):
                raise TnbcError(f"augment.{name} values must be > 0, got {min(getattr(self, name))}")
        if bool(self.alpha) != bool(self.sigma):
            raise TnbcError("augment.alpha and augment.sigma must both be empty or both non-empty")
        for angle in self.rotations:
            if not -360.0 <= angle <= 360.0:
                raise TnbcError(f"augment.rotations must be within +-360 degrees, got {angle}")
        for name, top, closed in (("distort", 0.25, True), ("shrink", 1.0, False), ("stain", 1.0, False)):
            for value in getattr(self, name):
                if not (0.0 < value <= top if closed else 0.0 < value < top):
                    raise TnbcError(f"augment.{name} values must be in (0, {top:g}{']' if closed else ')'}, got {value}")
        for split in self.splits:
            if split not in SPLITS:
                raise TnbcError(f"augment.splits: unknown split '{split}' (expected {', '.join(SPLITS)})")
        if self.splits and not (self.flips or self.rotations or self.alpha or self.distort or self.shrink
                                or self.stain):
            raise TnbcError(f"augment: splits {list(self.splits)} are to be augmented but the variant list is "
                            "empty (set augment.splits = [] to keep originals only)")


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines the bytes of `tnbc dataset`'s output (workers do not)."""

    seed: int = 0  # global augmentation seed; each variant's stream derives from (seed, key, op, params)
    layout: Layout = "auto"  # how the raw folder is read: tnbc | folders | imagemask, or auto (by its folders)
    mask_threshold: int | None = None  # None: masks must be exactly {0,255}; else nucleus = value > threshold
    png_compression: int = 1  # zlib level 0-9 for written PNGs (lossless at any level)
    png_strategy: PngStrategy = "rle"  # zlib strategy for written PNGs
    png_filter: PngFilter = "up"  # PNG row filter: one fixed filter encodes ~1.5x faster than adaptive (BENCHMARKS §3)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check_numbers(self, "")
        if self.mask_threshold is not None and not 0 <= self.mask_threshold < 255:
            raise TnbcError(f"mask_threshold must be in [0, 255), got {self.mask_threshold}")
        if not 0 <= self.png_compression <= 9:
            raise TnbcError(f"png_compression must be in 0..9, got {self.png_compression}")
        for name, literal, what in (("png_strategy", PngStrategy, "strategy"), ("png_filter", PngFilter, "filter"),
                                    ("layout", Layout, "layout")):
            _check_choice(getattr(self, name), literal, name, what)


@dataclass(frozen=True)
class RecordsConfig:
    """How `tnbc records` packs the dataset into TFRecord shards."""

    shard_mb: float = 100.0  # target shard size in MiB; a split smaller than this gets one shard
    compression: Compression = "none"  # PNG bytes barely compress: gzip mostly costs read time
    seed: int = 0  # fixed shuffle of items before sharding, so every shard mixes patients and ops

    def __post_init__(self) -> None:
        _check_numbers(self, "")
        if not self.shard_mb > 0:
            raise TnbcError(f"shard_mb must be > 0, got {self.shard_mb}")
        _check_choice(self.compression, Compression, "compression")


@dataclass(frozen=True)
class ModelConfig:
    """Which U-Net to build and its shape."""

    name: ModelName = "unet"  # the zoo: model/registry.py (unet is the default; unet_seed the old system's)
    levels: int = 5  # resolution levels; patch sides must divide by 2**(levels - 1)
    base_filters: int = 16  # filters at level 0, doubling per level
    kernel: int = 3  # kernel side (unet_seed: at level 0, shrinking by 2 per level to 3)
    dilation: int = 1  # unet_seed only: dilation at level 0, falling by 1 per level to 1
    dropout: float = 0.0  # unet: after each block's first conv; unet_seed: dropout * level
    batch_norm: bool = True  # BatchNorm after every conv (unet_seed: the old 'normalization' flag)
    interior: int = 0  # > 0: a 2nd output channel learns each nucleus' core (mask eroded by this many px; see
    #                    interior_target), whose components split touching nuclei at evaluation; 0: the mask only
    encoder_weights: EncoderWeights = "none"  # efficient_unet / deeplabv3plus: "imagenet" downloads Keras' weights
    # "macenko": the model's first layer maps each input's stains to a fixed reference (model/stain_norm.py),
    # in training, eval and infer alike; "none": the image as it is
    stain_norm: StainNorm = field(default="none", metadata=LATER)
    # what the interior channel learns (data/pipeline.training_target): "core", the mask eroded by `interior` px
    # (0/1); "distance", each pixel's depth in its nucleus capped at `interior` px, / interior (0..1), whose
    # threshold (core_threshold, chosen on valid) then picks the erosion
    interior_target: InteriorTarget = field(default="core", metadata=LATER)

    def __post_init__(self) -> None:
        _check_numbers(self, "model.")
        _check_choice(self.name, ModelName, "model.name", "model")
        _check_choice(self.encoder_weights, EncoderWeights, "model.encoder_weights", "choice")
        _check_choice(self.stain_norm, StainNorm, "model.stain_norm", "choice")
        _check_choice(self.interior_target, InteriorTarget, "model.interior_target", "choice")
        if not 2 <= self.levels <= 8 or self.base_filters < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise TnbcError("model: levels must be 2..8, base_filters >= 1, kernel odd and >= 1")
        if self.dilation < 1 or not 0.0 <= self.dropout < 1.0:
            raise TnbcError("model: dilation must be >= 1 and dropout in [0, 1)")
        if not 0 <= self.interior <= 16:
            raise TnbcError(f"model.interior must be 0 (off) to 16 px, got {self.interior}")

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The output-channel map: channel i of the model's output holds `channels[i]` -- the nucleus mask
        first, then the interior when `interior` > 0. Losses, metrics, eval and infer all read it."""
        return CHANNEL_ORDER[: 2 if self.interior else 1]

    @property
    def stride(self) -> int:
        """What every input side must divide by: 2 ** (levels - 1) for the U-Nets, the encoder's output stride
        for the keras.applications models, patch 4 x (levels - 2) mergings x windows of 8 for swin_unet."""
        swin = 4 * 2 ** (self.levels - 2) * 8
        return swin if self.name == "swin_unet" else FIXED_STRIDE.get(self.name, 2 ** (self.levels - 1))

    @property
    def outputs(self) -> int:
        """Number of output channels."""
        return len(self.channels)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `tnbc train` needs besides the records folder and the run folder."""

    seed: int = 0  # weights, data order and augmentation; same seed + data -> same weights on CPU
    epochs: int = 40  # upper bound; EarlyStopping usually ends sooner
    steps_per_epoch: int = 100  # training batches per epoch (the training stream is endless)
    batch_size: int = 8  # global batch; a distribution strategy splits it across replicas
    patch: int = 256  # training crop side (random crop + flips + rot90, on the fly)
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3  # initial learning rate
    weight_decay: float = 1e-4  # adamw only
    clipvalue: float = 0.3  # gradient value clipping (the old system's 0.3)
    loss: LossName = "bce_dice"  # over every output channel
    schedule: ScheduleName = "plateau"  # plateau (best epoch by val_loss) | cosine (fixed decay, last epoch kept)
    patience: int = 10  # EarlyStopping on val_loss (best weights restored); plateau only
    reduce_lr_factor: float = 0.2  # ReduceLROnPlateau factor on val_loss (1.0: off)
    reduce_lr_patience: int = 4  # epochs without improvement before the learning rate drops
    min_lr: float = 1e-6  # floor (the old min_lr=0 let the rate decay to 2.6e-10)
    val_batch_size: int = 2  # whole valid images per evaluation batch
    val_ops: tuple[str, ...] = ("original",)  # ops of the valid split validated each epoch (empty: all)
    shuffle_buffer: int = 256  # training crops in the shuffle buffer
    flip_rot: bool = True  # random flip + rot90 of every training crop (false: random crops only)
    stain_jitter: float = 0.0  # HED stain jitter sigma of every training crop, on the fly (0: off; data/stain.py)
    # Gaussian blur of every training crop, sigma ~ U(0, this) px, on the fly (0: off; data/blur.py)
    blur_jitter: float = field(default=0.0, metadata=LATER)
    epoch_infer: int = 3  # valid images drawn into epoch_infer/ after each epoch (0: off)
    train_on: TrainOn = field(default="train", metadata=LATER)  # train | train+valid (see TrainOn)
    strategy: StrategyName = "auto"  # auto: MirroredStrategy over several GPUs, else one device; multi_worker: TF_CONFIG
    # auto: mixed_float16 on GPUs (cc >= 7); on CPUs with native bf16 the faster of float32 and mixed_bfloat16
    # as measured once per machine and model (model/speed.py; runs under 2,000 crops: mixed_bfloat16), else float32
    precision: PrecisionName = "auto"
    jit: bool = False  # XLA-compile the train step: Keras leaves it off under op determinism, which train turns on
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        _check_numbers(self, "")
        for name in ("epochs", "steps_per_epoch", "batch_size", "patch", "val_batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise TnbcError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patch % self.model.stride:
            raise TnbcError(f"patch {self.patch} must divide by model {self.model.name}'s stride {self.model.stride}")
        for name, literal in (("optimizer", OptimizerName), ("schedule", ScheduleName), ("loss", LossName),
                              ("train_on", TrainOn)):
            _check_choice(getattr(self, name), literal, name, name)
        if self.train_on != "train" and self.schedule == "plateau":
            raise TnbcError(f"train_on = {self.train_on!r} needs schedule = 'cosine': plateau stops early on the "
                            "valid split, which it would then train on")
        if not 0.0 <= self.stain_jitter < 1.0:
            raise TnbcError(f"stain_jitter must be in [0, 1), got {self.stain_jitter}")
        if not 0.0 <= self.blur_jitter <= 8.0:
            raise TnbcError(f"blur_jitter must be in [0, 8] px, got {self.blur_jitter}")
        if not (self.lr > 0 and self.clipvalue > 0 and 0 < self.reduce_lr_factor <= 1 and 0 <= self.min_lr < self.lr):
            raise TnbcError("lr and clipvalue must be > 0, reduce_lr_factor in (0, 1], min_lr in [0, lr)")
        for name, literal, what in (("strategy", StrategyName, "strategy"), ("precision", PrecisionName, "policy")):
            _check_choice(getattr(self, name), literal, name, what)


@dataclass(frozen=True)
class PostProcess:
    """How a model's probabilities become nuclei. `tnbc eval` chooses it on the valid split and saves it
    beside the model (RUN/postprocess.json, bound to the model's sha256); infer, cv and study use it."""

    threshold: float = 0.5  # a pixel is nucleus where the mask probability exceeds this
    min_area: int = 30  # predicted objects under this many px are removed (the release's 1st percentile is 61)
    instances: InstanceMethod = "components"  # how touching nuclei are separated
    core_threshold: float = 0.5  # interior: a pixel is core where the interior probability exceeds this
    min_core: int = 4  # interior: cores under this many px seed no nucleus
    # interior: a mask object holding no core is a nucleus of its own (True) or a false one, removed (False)
    orphans: bool = True
    min_distance: int = 7  # watershed: least distance in px between the distance peaks that seed nuclei
    # an object whose mean mask probability is under this is removed as a false nucleus (0: none is); objects
    # are decided whole, so the threshold can stay low for nucleus borders while doubtful objects go
    min_score: float = 0.0

    def __post_init__(self) -> None:
        _check_numbers(self, "postprocess.")
        for name in ("threshold", "core_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise TnbcError(f"postprocess.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.min_score < 1.0:
            raise TnbcError(f"postprocess.min_score must be in [0, 1), got {self.min_score}")
        if not 0 <= self.min_area <= 10_000 or not 1 <= self.min_core <= 10_000 or not 1 <= self.min_distance <= 256:
            raise TnbcError("postprocess: min_area must be 0..10000, min_core 1..10000, min_distance 1..256")
        _check_choice(self.instances, InstanceMethod, "postprocess.instances", "method")


def load_train_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TOML, or the old system's INI (`*.config` / `*.ini`, literals only), + dotted CLI overrides."""
    if path is not None and Path(path).suffix in (".config", ".ini"):
        from tnbc_pipeline.legacy_ini import read_legacy_ini

        data = read_legacy_ini(Path(path))
        from_dict(TrainConfig, data, str(path))
        return from_dict(TrainConfig, merge(data, overrides or {}), f"{path} + command line")
    return load_config(TrainConfig, path, overrides)
