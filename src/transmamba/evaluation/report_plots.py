"""The PNGs of the teacher-vs-student report (`evaluation.report_md`), matplotlib without a display.

    heat_map(grid, png, title)               a retrieval grid's accuracy by context length and depth
                                             (`transmamba eval`: passkey / needle, student and teacher)
    plot_transpoint_sweep(sweep, png, name)  held-out perplexity against the TransPoint P every layer
                                             uses (`transmamba convert`'s eval.transpoints)
"""

from __future__ import annotations

from pathlib import Path


def heat_map(grid: dict, png: Path, title: str) -> Path:
    """`grid["acc"]` (lengths x depths, in [0, 1]) as a red-to-green image with its colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    im = ax.imshow(grid["acc"], vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(grid["depths"])), [f"{d:.2f}" for d in grid["depths"]])
    ax.set_yticks(range(len(grid["lengths"])), [str(L) for L in grid["lengths"]])
    ax.set_xlabel("depth")
    ax.set_ylabel("context tokens")
    ax.set_title(title)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_transpoint_sweep(sweep: dict, png: Path, name: str) -> Path:
    """Held-out perplexity against the TransPoint P used by every layer (0 = pure SSM)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ps = sorted(sweep, key=int)
    ax.plot([int(p) for p in ps], [sweep[p] for p in ps], marker="o")
    ax.set_xlabel("TransPoint P (every layer; tokens before P use attention)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"convert {name}: quality vs TransPoint")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return png
