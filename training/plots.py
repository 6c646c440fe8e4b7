"""PNG plots of a run: loss, accuracy and LR curves from metrics.jsonl rows, and a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(metrics: list[dict], out_dir: Path, title: str, label_smoothing: float = 0.0) -> list[Path]:
    """Loss, accuracy and LR per epoch. The training loss is the recipe's criterion, so with label
    smoothing it sits higher than val/test (plain cross-entropy); its legend entry says so."""
    epochs = [m["epoch"] for m in metrics]
    labels = {"train_loss": f"train (label smoothing {label_smoothing:g})" if label_smoothing else "train",
              "test_acc_tta": "test, with TTA"}
    written = []
    for name, keys, ylabel in (
        ("loss", ("train_loss", "val_loss", "test_loss"), "cross-entropy loss"),
        ("accuracy", ("train_acc", "val_acc", "test_acc", "test_acc_tta"), "accuracy"),
        ("lr", ("lr",), "learning rate (end of epoch)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key in keys:
            values = [m.get(key, float("nan")) for m in metrics]
            if any(v == v for v in values):  # not all NaN
                label = labels.get(key, key.split("_")[0])
                sparse = key == "test_acc_tta"  # measured on selected epochs only
                ax.plot(epochs, values, marker="o" if sparse else "." if len(epochs) < 30 else None,
                        linestyle="none" if sparse else "-", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(confusion: list[list[int]], classes: tuple[str, ...], path: Path, title: str) -> Path:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
