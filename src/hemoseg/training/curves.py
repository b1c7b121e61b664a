"""The paper's Figure 5: loss and Dice per epoch, train vs validation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(epochs, [h["train_dice"] for h in history], label="train")
    ax2.plot(epochs, [h["val_dice"] for h in history], label="validation")
    ax2.set(xlabel="epoch", ylabel="Dice", title="Dice (pooled, mean over classes)", ylim=(0, 1))
    coarse = [h["epoch"] for h in history if float(h.get("coarse_share") or 0) > 0]
    for ax in (ax1, ax2):
        if coarse:  # validation is at full resolution, so its curve jumps when training gets there
            ax.axvspan(min(coarse) - 0.5, max(coarse) + 0.5, color="0.9", label="2x-pooled training input")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
