"""What a run writes for people: ``metrics.jsonl`` (one JSON object per evaluation) and ``curves.png``, and,
from the last evaluation, ``per_class.json`` and ``confusion.png`` (:func:`write_confusion`).

:class:`MetricsFile` is the ``on_record`` callback of :class:`cnnjax.training.hooks.Evaluate` in the CLI;
:func:`truncate_metrics` drops the rows a killed run wrote after its last checkpoint, so a resumed run never
duplicates them. :func:`per_class_top1` and :func:`plot_confusion` read a confusion matrix (row = true label,
column = top-1 prediction, as :func:`cnnjax.training.loop.evaluate` returns it with ``confusion=True``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from cnnjax.checkpoint import StorageError


@contextlib.contextmanager
def writing(path: pathlib.Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (disk full, permissions) into a one-line
    :class:`~cnnjax.checkpoint.StorageError` (exit 4 in the CLI)."""
    try:
        yield
    except OSError as err:
        raise StorageError(f"writing {path} failed ({err.strerror or err}); the committed checkpoints are "
                           "kept") from None


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (temporary file + rename): a kill leaves the old or the new file,
    never half of one. An ``OSError`` becomes a :class:`~cnnjax.checkpoint.StorageError`."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        tmp.write_text(text)
        os.replace(tmp, path)


def append_jsonl(path: pathlib.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # a line cut short by a kill or a full disk
        return None
    return row if isinstance(row, dict) and "step" in row else None


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (lines that do not parse are skipped)."""
    if not path.exists():
        return []
    return [row for row in map(_parse, path.read_text().splitlines()) if row is not None]


def truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Drop records written after ``step`` (by a run that was killed before its next checkpoint) and lines cut
    short; the file is replaced atomically (temporary file + rename), so a kill here loses nothing."""
    if path.exists():
        keep = [json.dumps(row) for row in read_jsonl(path) if row["step"] <= step]
        write_atomic(path, "".join(ln + "\n" for ln in keep))


def plot_curves(metrics_path: pathlib.Path, out_path: pathlib.Path) -> None:
    """``curves.png``: train/val loss and top-1 against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path)
    if not rows:
        with contextlib.suppress(FileNotFoundError):
            out_path.unlink()  # no rows left (a run starting over): no stale picture either
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in rows], "o-", label="val")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    b.plot(ep, [r["train_top1"] for r in rows], "o-", label="train top-1")
    b.plot(ep, [r["val_top1"] for r in rows], "o-", label="val top-1")
    b.plot(ep, [r["val_top5"] for r in rows], "--", label="val top-5")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


class MetricsFile:
    """Append each evaluation record to ``workdir/metrics.jsonl`` and redraw ``workdir/curves.png``."""

    def __init__(self, workdir: pathlib.Path):
        self.path, self.curves = workdir / "metrics.jsonl", workdir / "curves.png"

    def __call__(self, record: dict) -> None:
        with writing(self.path):
            append_jsonl(self.path, record)
            plot_curves(self.path, self.curves)


def epoch_line(record: dict) -> str:
    """The one log line per evaluated epoch."""
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.4f}"
            f" | val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.4f} "
            f"top-5 {record['val_top5']:.4f} | {record['images_per_sec']:.1f} img/s")


#: Above this many classes :func:`plot_confusion` draws the matrix without tick labels and lists the most
#: confused pairs beside it; up to it every class is named on both axes.
LABELLED_MAX = 30
#: Up to this many classes the cells are annotated with their counts.
ANNOTATED_MAX = 15


def check_confusion(matrix, class_names: Sequence[str] | None = None) -> np.ndarray:
    """``matrix`` as a (K, K) int64 array, or ``ValueError`` saying what is wrong with it (not square, not
    counts, ``class_names`` not K long)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"a confusion matrix is square (K, K) with K >= 1, got shape {m.shape}")
    if m.dtype.kind not in "iuf" or not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(m != np.round(m)):
        raise ValueError("a confusion matrix holds counts: finite non-negative integers")
    if class_names is not None and len(class_names) != m.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {m.shape[0]}-class confusion matrix")
    return m.astype(np.int64)


def per_class_top1(matrix) -> list[float | None]:
    """Top-1 accuracy of each true class: ``matrix[k, k] / matrix[k].sum()``, ``None`` for a class with no
    examples. Weighted by the row sums, these average to the overall top-1 (trace / total)."""
    m = check_confusion(matrix)
    counts, hits = m.sum(axis=1), np.diag(m)
    return [float(h) / float(n) if n else None for h, n in zip(hits, counts)]


def most_confused(matrix, top: int = 20) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells as ``(true, predicted, count)``, largest first (ties: row-major
    order), zero cells left out."""
    m = check_confusion(matrix).copy()
    np.fill_diagonal(m, 0)
    flat = np.argsort(-m, axis=None, kind="stable")[:top]
    rows, cols = np.unravel_index(flat, m.shape)
    return [(int(r), int(c), int(m[r, c])) for r, c in zip(rows, cols) if m[r, c] > 0]


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "\u2026"


def plot_confusion(matrix, class_names: Sequence[str] | None, path: pathlib.Path, title: str = "",
                   top: int = 20) -> None:
    """``confusion.png``: the confusion matrix as a heat map, each row divided by its count (the fraction of a
    true class given each prediction; the diagonal is the per-class top-1) so that rare and common classes
    compare.

    Up to :data:`LABELLED_MAX` classes both axes name every class (``class_names``, else the label index) and
    up to :data:`ANNOTATED_MAX` the cells carry their counts. Above that (e.g. ImageNet's 1000) the map has
    index ticks only, a square-root colour scale so the sparse mistakes show, and beside it a bar chart of the
    ``top`` most confused (true -> predicted) pairs by count, with their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, PowerNorm

    m = check_confusion(matrix, class_names)
    k = m.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    counts = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, counts, out=np.zeros(m.shape), where=counts > 0)
    large = k > LABELLED_MAX
    pairs = most_confused(m, top) if large else []
    if large:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1.1, 1]})
    else:
        side = min(max(4.5, 0.45 * k + 2.5), 14)
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(frac, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1) if large else Normalize(0, 1),
                      interpolation="antialiased" if large else "nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set(xlabel="predicted class", ylabel="true class")
    if not large:
        ax.set_xticks(range(k), [_short(n) for n in names], rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(k), [_short(n) for n in names])
        if k <= ANNOTATED_MAX:
            for r in range(k):
                for c in range(k):
                    if m[r, c]:
                        ax.text(c, r, str(m[r, c]), ha="center", va="center", fontsize=8,
                                color="white" if frac[r, c] > 0.5 else "black")
    else:
        labels = [f"{_short(names[r], 22)} \u2192 {_short(names[c], 22)}" for r, c, _ in pairs]
        bars.barh(range(len(pairs)), [n for _, _, n in pairs], color="tab:red")
        bars.set_yticks(range(len(pairs)), labels, fontsize=8)
        bars.invert_yaxis()
        bars.set(xlabel="examples", title=f"the {len(pairs)} most confused pairs (true \u2192 predicted)")
        bars.grid(axis="x", alpha=0.3)
    total = int(m.sum())
    ax.set_title(title or f"confusion matrix: {total} examples, top-1 {np.trace(m) / max(total, 1):.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_report(matrix, class_names: Sequence[str] | None, summary: Mapping | None = None) -> dict:
    """The content of ``per_class.json``: ``summary`` (e.g. ``step``, ``val_top1``), then ``classes`` (per
    label: ``label``, ``name``, ``count``, ``top1``, or null without examples) and ``confusion`` (the matrix as
    nested lists, row = true label, column = prediction)."""
    m = check_confusion(matrix, class_names)
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(m.shape[0])]
    classes = [{"label": i, "name": names[i], "count": int(n), "top1": acc}
               for i, (n, acc) in enumerate(zip(m.sum(axis=1), per_class_top1(m)))]
    return {**(summary or {}), "classes": classes, "confusion": m.tolist()}


def write_confusion(folder: pathlib.Path, matrix, class_names: Sequence[str] | None,
                    summary: Mapping | None = None) -> None:
    """``folder/per_class.json`` (:func:`confusion_report`, written atomically) and ``folder/confusion.png``
    (:func:`plot_confusion`); ``class_names`` that are not one per class are replaced by the label indices."""
    m = check_confusion(matrix)
    if class_names is not None and len(class_names) != m.shape[0]:
        class_names = None
    write_atomic(folder / "per_class.json", json.dumps(confusion_report(m, class_names, summary)))
    with writing(folder / "confusion.png"):
        plot_confusion(m, class_names, folder / "confusion.png")
