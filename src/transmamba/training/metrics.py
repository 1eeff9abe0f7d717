"""Training metrics: a CSV appender and loss-curve plots.

One CSV row per logged step. Columns are fixed when the file is created (the header); a row may
leave any of them empty (e.g. val_loss on steps without validation). On resume the trainer calls
`truncate_after(step)` so rows logged after the restored checkpoint are dropped, not duplicated.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

FIELDS = ["step", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tok_per_s", "elapsed_s"]


class MetricsLog:
    """Append metric rows to a CSV file, writing the header once."""

    def __init__(self, path: str | os.PathLike, fields: list[str] | None = None):
        self.path = Path(path)
        if self.path.exists() and self.path.stat().st_size > 0:
            header = read_metrics_header(self.path)
            if fields is not None and header != list(fields):
                raise ValueError(f"{self.path} has columns {header}, expected {list(fields)}")
            self.fields = header
        else:
            self.fields = list(fields or FIELDS)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def log(self, **row) -> None:
        """Append one row; unknown columns raise ValueError, missing ones are left empty."""
        extra = set(row) - set(self.fields)
        if extra:
            raise ValueError(f"unknown metric columns {sorted(extra)}; the CSV has {self.fields}")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k)) for k in self.fields])

    def rows(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` (rows logged after the checkpoint we resume from); returns how many."""
        with self.path.open(newline="") as f:
            reader = list(csv.reader(f))
        header, body = reader[0], reader[1:]
        i = header.index("step")
        keep = [r for r in body if r and int(float(r[i])) <= step]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(keep)
        os.replace(tmp, self.path)
        return len(body) - len(keep)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest round-trip text: reading back gives the same float
    return str(v)


def read_metrics_header(path: str | os.PathLike) -> list[str]:
    """The column names of a metrics CSV (empty for an empty file)."""
    with Path(path).open(newline="") as f:
        return next(csv.reader(f), [])


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows as dicts of floats (ints for step/tokens); empty cells become None."""
    out = []
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v in ("", None):
                    row[k] = None
                elif k in ("step", "tokens"):
                    row[k] = int(float(v))
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def _series(rows, x, y):
    pts = [(r[x], r[y]) for r in rows if r.get(y) is not None and r.get(x) is not None
           and math.isfinite(r[y])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss_curve(csv_path, png_path, title: str | None = None, x: str = "tokens") -> Path:
    """Train and validation loss against `x` (tokens or step) from one metrics CSV, saved as PNG."""
    return plot_loss_curves({None: csv_path}, png_path, title=title, x=x)


def plot_loss_curves(runs: dict, png_path, title: str | None = None, x: str = "tokens") -> Path:
    """Several runs on one plot: {label: csv_path}; train loss dashed/thin, validation solid with markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # Agg canvas: no display, no global pyplot state
    ax = fig.add_subplot()
    for i, (label, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        color = f"C{i}"
        tx, ty = _series(rows, x, "train_loss")
        vx, vy = _series(rows, x, "val_loss")
        prefix = f"{label} " if label else ""
        if tx:
            ax.plot(tx, ty, color=color, alpha=0.45, lw=1, label=f"{prefix}train")
        if vx:
            ax.plot(vx, vy, color=color, marker="o", ms=3, lw=1.8, label=f"{prefix}val")
    ax.set_xlabel(x)
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    return png_path
