"""The zoo, side by side: one markdown table from `make zoo`'s cv folders (issue 14).

    python -m benchmarks.zoo_table cv/zoo_unet cv/zoo_attention_unet ...

Per model (one `tnbc cv --model NAME` folder each, same folds and budget): parameters, training images/s
and peak RSS of the training process (each fold's done.json, mean over folds), Dice, IoU, AJI, F1@0.5, PQ
as mean +- sd over the folds (the mean alone for one fold; cv_summary.json, which covers every fold
scored with the same settings), the model's inference megapixels/s on the test images
(eval_test/summary.json), the kept epoch of each fold out of those run (the best by val_loss under the
plateau schedule, where one at the last epoch says the model was still improving; always the last under
the cosine schedule), and the precision the folds trained in (`precision = "auto"` is bfloat16 on CPUs
that have it).
A second table gives each model's learning curve: training loss and valid Dice at every epoch, mean over
the folds -- where a model still climbs at the last epoch, the budget, not the architecture, limited it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tnbc_pipeline.report import read_history

METRICS = ("dice", "iou", "aji", "f1", "pq")


def model_row(folder: Path) -> str:
    summary = json.loads((folder / "cv_summary.json").read_text())
    folds = summary["summarised_folds"]
    done = [json.loads((folder / f"fold{i}" / "run" / "done.json").read_text()) for i in folds]
    scored = [json.loads((folder / f"fold{i}" / "run" / "eval_test" / "summary.json").read_text()) for i in folds]
    name = summary["settings"]["train_config"]["model"]["name"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    cells = [name, f"{done[0].get('params', 0):,}", f"{mean([d['train_images_per_s'] for d in done]):.1f}",
             f"{mean([d.get('peak_rss_mb', float('nan')) for d in done]):.0f}",
             *(f"{summary[k]['mean']:.3f}" + (f" ± {summary[k]['sd']:.3f}" if len(folds) > 1 else "")
               for k in METRICS),
             f"{mean([s.get('predict_megapixels_per_s', float('nan')) for s in scored]):.2f}",
             " ".join(f"{d['best_epoch']}/{d['epochs_run']}" for d in done), " ".join(map(str, folds)),
             "/".join(sorted({d.get("precision", "float32") for d in done}))]
    return "| " + " | ".join(cells) + " |"


def curve_row(folder: Path) -> str:
    """One model's learning curve: 'loss / valid Dice' at each epoch, mean over its folds' history.csv."""
    summary = json.loads((folder / "cv_summary.json").read_text())
    histories = [read_history(folder / f"fold{i}" / "run" / "history.csv")
                 for i in summary["summarised_folds"]]
    epochs = min(len(h) for h in histories)  # folds of one model share the budget; a cut-short one limits it

    def mean(key: str, epoch: int) -> float:
        return sum(h[epoch][key] for h in histories) / len(histories)

    cells = [summary["settings"]["train_config"]["model"]["name"],
             *(f"{mean('loss', e):.3f} / {mean('val_dice_coef', e):.2f}" for e in range(epochs))]
    return "| " + " | ".join(cells) + " |"


def main(folders: list[str]) -> None:
    print("| model | params | train img/s | peak RSS MB | Dice | IoU | AJI | F1@0.5 | PQ | infer MP/s "
          "| best epoch / run | folds | precision |")
    print("|" + "---|" * 13)
    for folder in folders:
        print(model_row(Path(folder)))
    rows = [curve_row(Path(folder)) for folder in folders]
    width = max(row.count("|") - 2 for row in rows)  # epochs shown
    print("\n| model (training loss / valid Dice, mean over folds) | "
          + " | ".join(f"epoch {e + 1}" for e in range(width)) + " |")
    print("|" + "---|" * (width + 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
