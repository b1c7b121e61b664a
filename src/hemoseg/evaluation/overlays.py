"""Best/worst case figures: image, ground truth and prediction side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def palette(n: int) -> np.ndarray:
    try:
        from hemoseg.data.figures import class_colors
        colors = np.asarray(class_colors(n), dtype=float)[:, :3]
        return colors / 255.0 if colors.max() > 1 else colors
    except ImportError:
        return plt.get_cmap("tab10")(np.arange(n))[:, :3]


def colorize(gray: np.ndarray, onehot: np.ndarray, colors: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(gray[..., None].astype(float) / 255.0, 3, axis=-1)
    for c, m in enumerate(onehot):
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colors[c]
    return rgb


def save_case_grid(cases, path: Path, names: list[str], title: str) -> None:
    colors = palette(len(names))
    fig, axes = plt.subplots(len(cases), 2, figsize=(6, 3 * len(cases)), squeeze=False)
    for row, (score, rec, img, labels, gt) in enumerate(cases):
        pred = np.stack([labels == c + 1 for c in range(len(names))])
        axes[row, 0].imshow(colorize(img, gt, colors))
        # Roboflow names run to 60+ characters: keep the distinctive start, on its own line
        name = rec.file_name if len(rec.file_name) <= 34 else rec.file_name[:33] + "…"
        axes[row, 0].set_title(f"{name}\nground truth", fontsize=8)
        axes[row, 1].imshow(colorize(img, pred, colors))
        axes[row, 1].set_title(f"\nprediction (Dice {score:.3f})", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.legend(handles=[Patch(color=colors[i], label=n) for i, n in enumerate(names)], loc="lower center",
               ncol=min(len(names), 3), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
