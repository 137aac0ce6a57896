"""Draw docs/deploy.png, the deployment on Kubernetes (docs/deploy.md).

    python docs/deploy_diagram.py            # rewrite docs/deploy.png
    python docs/deploy_diagram.py OUT.png    # draw elsewhere (tests/test_deploy_docs.py compares)

Names and ports come from the service's settings, so the picture says what the code does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from service.config import ServeSettings

OUT = Path(__file__).resolve().parent / "deploy.png"
SERVE = ServeSettings()


def box(ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, color: str, size: int = 9) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="#333333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], text: str = "") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="#333333"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=7.5)


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=100)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    ax.text(
        5.5,
        5.95,
        "image-classifier on Kubernetes with Dapr and KEDA",
        ha="center",
        fontsize=12,
        weight="bold",
    )

    # The Deployment: replicas, each a pod of the app and its injected daprd.
    ax.add_patch(FancyBboxPatch((2.9, 0.35), 5.0, 5.2, boxstyle="round,pad=0.02", fc="#f4f7fb", ec="#7a8ca5"))
    ax.text(
        5.4,
        5.3,
        "Deployment image-classifier (HPA / KEDA: 3..12 replicas, PDB maxUnavailable 1)",
        ha="center",
        fontsize=8,
    )
    for i, y in enumerate((3.55, 1.95, 0.55)):
        ax.add_patch(FancyBboxPatch((3.1, y), 4.6, 1.25, boxstyle="round,pad=0.02", fc="white", ec="#7a8ca5"))
        ax.text(7.6, y + 1.08, f"pod {i + 1}", fontsize=7, color="#555555", ha="right")
        box(
            ax,
            3.3,
            y + 0.15,
            1.9,
            0.8,
            f"daprd\n(injected)\nmax-body-size {SERVE.max_message_bytes >> 20}Mi",
            "#dbe9ff",
            7.5,
        )
        box(
            ax,
            5.6,
            y + 0.15,
            1.95,
            0.8,
            f"classifier serve\ngRPC :{SERVE.port}, metrics :9464\ncache volume (emptyDir)",
            "#e3f5e1",
            7.5,
        )
        arrow(ax, (5.2, y + 0.55), (5.6, y + 0.55))

    box(ax, 0.2, 4.3, 2.2, 0.8, "callers\n(their own daprd)", "#fff3d6")
    box(ax, 0.2, 2.6, 2.2, 0.9, f"publishers\ntopic '{SERVE.images_topic}'", "#fff3d6")
    box(ax, 0.2, 0.7, 2.2, 1.0, "model uploads\nkubectl exec ... classifier\nmodels put", "#fff3d6", 8)
    arrow(ax, (2.4, 4.7), (3.3, 4.3), "invoke classify")

    box(
        ax,
        8.4,
        3.4,
        2.4,
        1.7,
        f"Redis\nstreams '{SERVE.images_topic}' (group\nimage-classifier), "
        f"'{SERVE.results_topic}',\n'{SERVE.updates_topic}'; models and\nguests ({SERVE.state_store})",
        "#fde2e2",
        7.5,
    )
    box(ax, 8.4, 1.6, 2.4, 1.1, "KEDA ScaledObject\nredis-streams pending\nentries + CPU", "#ece2fd", 8)
    box(ax, 8.4, 0.35, 2.4, 0.85, "OTel collector,\nPrometheus", "#eeeeee", 8)
    arrow(ax, (2.4, 3.05), (8.4, 3.9), "XADD")
    arrow(ax, (8.4, 3.6), (5.2, 2.5), "XREADGROUP (shared group)")
    arrow(ax, (2.4, 1.2), (3.3, 0.95))
    arrow(ax, (9.6, 3.4), (9.6, 2.7), "XPENDING")
    arrow(ax, (8.4, 2.15), (7.9, 2.15))
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
