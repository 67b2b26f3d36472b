"""What a run writes for people: ``metrics.jsonl`` (one JSON object per evaluation) and ``curves.png``.

:class:`MetricsFile` is the ``on_record`` callback of :class:`cnnjax.training.hooks.Evaluate` in the CLI;
:func:`truncate_metrics` drops the rows a killed run wrote after its last checkpoint, so a resumed run never
duplicates them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator

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
