"""The old system's `train_eval_infer.config` (INI), accepted as-is and mapped onto TrainConfig.

Every value is parsed as a Python *literal* (ast.literal_eval): numbers, strings, tuples, lists,
True/False/None. Nothing is ever evaluated, so `__import__('os').system(...)` is a bad literal, not a
command. Keys that only the old tools used are listed as ignored; keys nobody knows are warned about.
"""

from __future__ import annotations

import ast
import configparser
import logging
from pathlib import Path
from typing import Any

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import read_text

log = logging.getLogger(__name__)

_LOSSES = {"bce_dice_loss": "bce_dice", "binary_crossentropy": "bce", "dice_loss": "dice", "iou_loss": "iou",
           "bce_iou_loss": "bce_iou", "jacard_loss": "iou", "focal_loss": "focal", "tversky_loss": "tversky"}
# [model] model = "TensorflowXxx": the old API's class names -> the zoo's names (model/registry.py)
_MODELS = {"TensorflowUNet": "unet_seed", "TensorflowSlightlyFlexibleUNet": "unet_seed",
           "TensorflowAttentionUNet": "attention_unet", "TensorflowMultiResUNet": "multires_unet",
           "TensorflowUNet3Plus": "unet3plus", "TensorflowSwinUNet": "swin_unet",
           "TensorflowEfficientUNet": "efficient_unet", "TensorflowDeepLabV3Plus": "deeplabv3plus"}
# Keys of the old tools that have no meaning here (paths of its own layout, display switches, ...).
_IGNORED = {
    "model": {"generator", "image_channels", "num_classes", "input_normalize", "metrics", "show_summary"},
    "train": {"metrics", "model_dir", "eval_dir", "image_datapath", "mask_datapath", "create_backup",
              "save_weights_only", "epoch_change_infer", "epoch_change_infer_dir", "epoch_change_tiledinfer",
              "num_infer_images"},
}
_SECTIONS_UNUSED_BY_TRAIN = {"eval", "test", "infer", "tiledinfer", "segmentation", "mask", "generator", "augmentor"}


def _literal(raw: str, where: str) -> Any:
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise TnbcError(f"{where} = {raw.strip()!r} is not a literal value (expressions are never evaluated)") from None


def _square(value: Any, where: str) -> int:
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TnbcError(f"{where}: expected an int or a square pair like (5,5), got {value!r}")
    return value


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise TnbcError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def read_legacy_ini(path: Path) -> dict[str, Any]:
    """INI file -> a nested dict of TrainConfig keys (feed it to `config.from_dict`)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    try:
        parser.read_string(read_text(Path(path), 1024 * 1024), source=str(path))
    except (OSError, configparser.Error) as exc:
        raise TnbcError(f"{path}: cannot read INI config ({str(exc).splitlines()[0]})") from exc
    out: dict[str, Any] = {"model": {"name": "unet_seed", "batch_norm": False}}
    for section in parser.sections():
        if section not in ("model", "train"):
            if section not in _SECTIONS_UNUSED_BY_TRAIN:
                log.warning("%s: unknown section [%s] ignored", path, section)
            continue
        for key, raw in parser.items(section):
            where = f"{path}: [{section}] {key}"
            value = _literal(raw, where)
            if key in _IGNORED[section]:
                log.info("%s is not used by tnbc train (ignored)", where)
            elif (section, key) in (("model", "image_width"), ("model", "image_height")):
                out["patch"] = _typed(value, int, where)
            elif (section, key) == ("model", "model"):
                if value not in _MODELS:
                    raise TnbcError(f"{where}: no model here matches {value!r} (known: {', '.join(_MODELS)})")
                out["model"]["name"] = _MODELS[value]
            elif (section, key) == ("model", "base_filters"):
                out["model"]["base_filters"] = _typed(value, int, where)
            elif (section, key) == ("model", "base_kernels"):
                out["model"]["kernel"] = _square(value, where)
            elif (section, key) == ("model", "dilation"):
                out["model"]["dilation"] = _square(value, where)
            elif (section, key) == ("model", "num_layers"):
                out["model"]["levels"] = _typed(value, int, where)
            elif (section, key) == ("model", "dropout_rate"):
                out["model"]["dropout"] = _typed(value, float, where)
            elif (section, key) == ("model", "normalization"):
                out["model"]["batch_norm"] = _typed(value, bool, where)
            elif (section, key) == ("model", "learning_rate"):
                out["lr"] = _typed(value, float, where)
            elif (section, key) == ("model", "clipvalue"):
                out["clipvalue"] = _typed(value, float, where)
            elif (section, key) == ("model", "loss"):
                if value not in _LOSSES:
                    raise TnbcError(f"{where}: unknown loss {value!r} (known: {', '.join(_LOSSES)})")
                out["loss"] = _LOSSES[value]
            elif key in ("epochs", "batch_size", "patience") and section == "train":
                out[key] = _typed(value, int, where)
            elif (section, key) == ("train", "learning_rate_reducer"):
                if not _typed(value, bool, where):
                    out["reduce_lr_factor"] = 1.0
            elif (section, key) == ("train", "reducer_factor"):
                out.setdefault("reduce_lr_factor", _typed(value, float, where))
            elif (section, key) == ("train", "reducer_patience"):
                out["reduce_lr_patience"] = _typed(value, int, where)
            else:
                log.warning("%s: unknown key ignored", where)
    if parser.has_option("model", "image_width") and parser.has_option("model", "image_height"):
        w, h = (_literal(parser.get("model", k), k) for k in ("image_width", "image_height"))
        if w != h:
            raise TnbcError(f"{path}: [model] image_width {w} != image_height {h}: patches are square")
    return out
