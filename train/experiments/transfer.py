"""Transfer learning on bundled data: pretrain on digits 0-4, then learn digits 5-9 from a few labelled
examples per class, comparing training from scratch, linear probing, partial freezing and fine-tuning.

Writes ``OUT/results.json``, ``OUT/table.md`` (final val top-1, train top-1, train-val gap, wall time; mean over
seeds) and ``OUT/transfer.png``. Every run goes through ``train.main.train`` exactly as the CLI would, with
``resume=True``: a finished run is reused and an interrupted one continues, so rerunning the experiment in the
same ``--out`` redoes nothing that is done (its wall time is then not measured again).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

from train.config import TrainConfig
from train.main import train

PRETRAIN = "digits:classes=0+1+2+3+4"
MODES = {  # name -> (init from the pretrained run?, --transfer mode)
    "from scratch": (False, None),
    "linear probe": (True, "linear-probe"),
    "freeze stem+stage1": (True, "freeze:^(stem|stage1)"),
    "fine-tune": (True, "finetune"),
}


def run(out: pathlib.Path, arch: str, per_class: int, seeds: list[int], pretrain_epochs: int, epochs: int,
        lr: float) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    target = f"digits:classes=5+6+7+8+9,per_class={per_class}"
    t0 = time.perf_counter()
    pre = train(TrainConfig(arch=arch, dataset=PRETRAIN, epochs=pretrain_epochs, batch_size=64, seed=0,
                            workdir=str(out / "pretrain"), eval_every=pretrain_epochs, progress=False, resume=True))
    pre_time = time.perf_counter() - t0
    rows = []
    for name, (use_init, mode) in MODES.items():
        for seed in seeds:
            t = time.perf_counter()
            rec = train(TrainConfig(arch=arch, dataset=target, epochs=epochs, batch_size=25, lr=lr, seed=seed,
                                    init=str(out / "pretrain") if use_init else None, transfer=mode,
                                    workdir=str(out / f"{name.replace(' ', '_').replace('+', '_')}-s{seed}"),
                                    eval_every=epochs, progress=False, resume=True))
            rows.append({"mode": name, "seed": seed, "val_top1": rec["val_top1"], "train_top1": rec["train_top1"],
                         "gap": rec["train_top1"] - rec["val_top1"], "seconds": time.perf_counter() - t})
    summary = {"arch": arch, "pretrain": PRETRAIN, "pretrain_val_top1": pre["val_top1"],
               "pretrain_seconds": pre_time, "target": target, "epochs": epochs, "lr": lr, "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table(summary))
    plot(summary, out / "transfer.png")
    return rows


def _agg(rows: list[dict], mode: str, key: str) -> tuple[float, float]:
    vals = [r[key] for r in rows if r["mode"] == mode]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def table(summary: dict) -> str:
    rows = summary["rows"]
    n = len({r["seed"] for r in rows})
    lines = [f"Pretrained {summary['arch']} on `{summary['pretrain']}` (val top-1 "
             f"{summary['pretrain_val_top1']:.3f}); target `{summary['target']}`, {summary['epochs']} epochs, "
             f"lr {summary['lr']}; mean ± std over {n} seed(s).", "",
             "| mode | val top-1 | train top-1 | train − val gap | time (s) |", "|---|---|---|---|---|"]
    for mode in MODES:
        v, vs = _agg(rows, mode, "val_top1")
        t, ts = _agg(rows, mode, "train_top1")
        g, gs = _agg(rows, mode, "gap")
        s, _ = _agg(rows, mode, "seconds")
        lines.append(f"| {mode} | {v:.3f} ± {vs:.3f} | {t:.3f} ± {ts:.3f} | {g:+.3f} ± {gs:.3f} | {s:.1f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(MODES)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(modes))
    ax.bar([x - 0.2 for x in xs], [_agg(summary["rows"], m, "train_top1")[0] for m in modes], 0.4,
           label="train top-1 (augmented, epoch mean)")
    ax.bar([x + 0.2 for x in xs], [_agg(summary["rows"], m, "val_top1")[0] for m in modes], 0.4,
           yerr=[_agg(summary["rows"], m, "val_top1")[1] for m in modes], label="val top-1")
    ax.set_xticks(list(xs), modes)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title=f"{summary['arch']}: digits 0-4 -> 5-9, "
           f"{summary['target'].split('per_class=')[1]} labelled per class")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.experiments transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments_out/transfer")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    a = p.parse_args(argv)
    run(pathlib.Path(a.out), a.arch, a.per_class, a.seeds, a.pretrain_epochs, a.epochs, a.lr)
    print((pathlib.Path(a.out) / "table.md").read_text())
    return 0
