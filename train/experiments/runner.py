"""What every experiment of ``python -m train.experiments NAME`` shares.

* :class:`Runner`: each run is a :class:`~train.config.TrainConfig` trained by the one training core
  (:func:`train.main.train`) in ``OUT/runs/<run-id>`` with ``resume=True``. A finished run leaves
  ``result.json`` (its final record and wall time) and is skipped next time; an interrupted one continues from
  its last checkpoint. So rerunning an experiment in the same ``--out`` redoes nothing that is done, and later
  experiments (``gradients``, ``lesion``) reuse the ``degradation`` runs through the same cache.
* :meth:`Runner.record`: a run's full ``config.json``, every ``metrics.jsonl`` row and the final record, as
  they go into ``results.json``.
* :func:`sweep_lr`: a few learning rates at a short budget, the best final val top-1 wins (cached like any run),
  so that a comparison measures the architecture rather than one recipe.
* :func:`verdict`: the 95% confidence interval of the difference of means in the claimed direction (Welch's t
  interval, or a percentile bootstrap; ``exact`` for deterministic counts, whose interval is the point):
  ``supported`` if it excludes 0 on the claimed side, ``not supported`` if it excludes 0 on the other side,
  ``mixed`` otherwise. Never written by hand.
* :func:`write_outputs`: ``results.json`` and ``table.md`` (the lecture's claim quoted in Russian with an
  English gloss, what the literature reports, what we measured as mean ± std over seeds, and the verdicts with
  the test used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cnnjax.training import compile_cache as jax_compile_cache
from cnnjax.training.loop import NonFiniteLossError
from train.config import TrainConfig, canonical_model_opt
from train.report import read_jsonl, write_atomic

BUDGETS = ("smoke", "default", "full")
RESULT = "result.json"


def default_out(name: str) -> pathlib.Path:
    return pathlib.Path("experiments_out") / name


def sibling_runs(out: str | pathlib.Path, experiment: str) -> pathlib.Path:
    """The run cache of ``experiment`` next to ``out`` (``OUT/../EXPERIMENT/runs``): how ``gradients`` and
    ``lesion`` find the ``degradation`` runs."""
    return pathlib.Path(out).parent / experiment / "runs"


class Runner:
    """Train and cache runs under ``runs`` (default ``out/runs``), each in ``<run-id>/``; ``log`` gets one line
    per run (and the training core's lines when ``verbose``)."""

    def __init__(self, out: str | pathlib.Path, log: Callable[[str], None] = print, verbose: bool = False,
                 runs: str | pathlib.Path | None = None):
        self.out = pathlib.Path(out)
        self.runs = pathlib.Path(runs) if runs is not None else self.out / "runs"
        self.log, self.verbose = log, verbose

    def workdir(self, run_id: str) -> pathlib.Path:
        return self.runs / run_id

    def done(self, run_id: str) -> dict | None:
        """The cached result of a finished run, or None."""
        path = self.workdir(run_id) / RESULT
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def run(self, run_id: str, cfg: TrainConfig) -> dict:
        """Train ``cfg`` as run ``run_id`` (or return its cached result): ``{"final": last evaluation record,
        "seconds": wall time of the training, "diverged": bool}``. A non-finite loss is a result (``diverged``,
        final record of the last good evaluation, if any), not an error: a learning-rate sweep tries rates that
        are too high on purpose."""
        cached = self.done(run_id)
        if cached is not None:
            self._check_same(run_id, cfg)
            return cached
        workdir = self.workdir(run_id)
        cfg = dataclasses.replace(cfg, workdir=str(workdir), resume=True, progress=False)
        self.log(f"[run] {run_id} ...")
        t0 = time.perf_counter()
        diverged = False
        try:
            final = train_run(cfg, self.log if self.verbose else (lambda _s: None))
        except NonFiniteLossError:
            diverged = True
            final = (read_jsonl(workdir / "metrics.jsonl")[-1:] or [{}])[0]
        if final.get("interrupted"):
            raise KeyboardInterrupt(f"run {run_id} was interrupted; rerun the experiment to resume it")
        final = {k: v for k, v in final.items() if k not in ("workdir",)}
        result = {"run_id": run_id, "final": final, "seconds": time.perf_counter() - t0, "diverged": diverged}
        write_atomic(workdir / RESULT, json.dumps(result, indent=2))
        self.log(f"[run] {run_id}: {_short(result)} in {result['seconds']:.1f} s")
        return result

    def _check_same(self, run_id: str, cfg: TrainConfig) -> None:
        """A cached run must have been trained with the same settings (else choose another --out)."""
        path = self.workdir(run_id) / "config.json"
        if not path.exists():
            return
        saved = json.loads(path.read_text())
        if "model_opt" in saved and saved["model_opt"] != canonical_model_opt(cfg.model_opt):
            raise ValueError(f"{self.workdir(run_id)} holds a run with --model-opt {saved['model_opt']}, this "
                             f"experiment wants {canonical_model_opt(cfg.model_opt)}: use another --out or delete "
                             "that run")
        for name in ("arch", "dataset", "epochs", "batch_size", "lr", "seed", "weight_decay", "optimizer"):
            want = getattr(cfg, name)
            if want is not None and name in saved and saved[name] != want:
                raise ValueError(f"{self.workdir(run_id)} holds a run with {name}={saved.get(name)!r}, this "
                                 f"experiment wants {want!r}: use another --out or delete that run")

    def record(self, run_id: str) -> dict:
        """Everything ``results.json`` keeps of a run: config, per-epoch metrics, final record, wall time."""
        workdir = self.workdir(run_id)
        config_path = workdir / "config.json"
        return {"run_id": run_id, "config": json.loads(config_path.read_text()) if config_path.exists() else None,
                "metrics": read_jsonl(workdir / "metrics.jsonl"), **(self.done(run_id) or {})}


def start(budgets: dict[str, Any], budget_name: str, out: str | pathlib.Path, seeds: Sequence[int] | None,
          log: Callable[[str], None] = print) -> tuple[Any, tuple[int, ...], pathlib.Path, Runner]:
    """What every experiment's ``run`` begins with: its budget, the seeds (the budget's unless given), ``out`` as a
    path, and a :class:`Runner` caching under ``out/runs``."""
    budget = budgets[budget_name]
    out = pathlib.Path(out)
    return budget, tuple(seeds or budget.seeds), out, Runner(out, log)


def train_run(cfg: TrainConfig, log: Callable[[str], None]) -> dict:
    from train.main import train  # imported late: the CLI's --help needs no JAX

    return train(cfg, log=log)


def _short(result: dict) -> str:
    f = result["final"]
    if result["diverged"]:
        return "diverged (non-finite loss)"
    return f"train loss {f.get('train_loss', float('nan')):.4f}, val top-1 {f.get('val_top1', float('nan')):.4f}"


def step_config(arch: str, spec: str, n_train: int, steps: int, batch_size: int, lr: float, seed: int,
                warmup_steps: int, **extra: Any) -> TrainConfig:
    """A run measured in optimizer steps: ``steps`` AdamW steps of ``batch_size`` on ``spec`` (``n_train``
    training images; the remainder batch of an epoch is dropped), ``warmup_steps`` of linear warmup then cosine
    decay, one evaluation and one checkpoint, at the end. ``extra``: more :class:`TrainConfig` fields."""
    spe = max(1, n_train // batch_size)  # training batches per epoch
    epochs = -(-steps // spe)
    return TrainConfig(arch=arch, dataset=spec, max_steps=steps, epochs=epochs, batch_size=batch_size,
                       optimizer="adamw", lr=lr, warmup_epochs=warmup_steps / spe, eval_every=epochs,
                       checkpoint_every=steps, keep=1, seed=seed, progress=False, **extra)


@contextlib.contextmanager
def compile_cache(path: pathlib.Path) -> Iterator[None]:
    """JAX's persistent compilation cache in ``path`` while the runs train: the seeds and data sizes of a model
    compile the same programs (same shapes, steps and learning rate), so only the first compiles. The previous
    settings are restored afterwards (:func:`cnnjax.training.compile_cache.enabled`)."""
    with jax_compile_cache.enabled(path):
        yield


def sweep_lr(runner: Runner, base: TrainConfig, lrs: Sequence[float], seed: int = 0,
             run_id: Callable[[float], str] | None = None) -> tuple[float, list[dict]]:
    """Train ``base`` (its epochs, evaluation cadence ...) with each learning rate of ``lrs`` on seed ``seed`` and
    return the one with the best final val top-1 (ties: lower val loss; a diverged run loses) and the sweep's rows.
    Runs are cached like any other, as ``run_id(lr)`` (default ``sweep-<arch>-lr<lr>-e<epochs>-s<seed>``): name
    them like the experiment's own runs and the best one is reused as that seed's run."""
    rows = []
    for lr in lrs:
        rid = run_id(lr) if run_id else f"sweep-{base.arch}-lr{lr:g}-e{base.epochs}-s{seed}"
        res = runner.run(rid, dataclasses.replace(base, lr=lr, seed=seed))
        f = res["final"]
        ok = not res["diverged"] and "val_top1" in f
        rows.append({"arch": base.arch, "lr": lr, "run_id": rid, "diverged": res["diverged"],
                     "val_top1": f["val_top1"] if ok else 0.0, "val_loss": f["val_loss"] if ok else math.inf,
                     "train_loss": f["train_loss"] if ok else math.inf})
    best = max(rows, key=lambda r: (r["val_top1"], -r["val_loss"]))
    return best["lr"], rows


def sweep_and_train(runner: Runner, names: Sequence[str], base: Callable[[str], TrainConfig],
                    lrs: Callable[[str], Sequence[float]], run_id: Callable[[str, float, int], str],
                    seeds: Sequence[int]) -> dict:
    """For each model ``name``: :func:`sweep_lr` of ``base(name)`` over ``lrs(name)`` on ``seeds[0]``, then every
    seed at the best rate; the sweep's runs are named ``run_id(name, lr, seeds[0])`` like the main runs, so the
    best one is ``seeds[0]``'s run. Returns ``{name: {"lr", "sweep", "runs": [run ids in seed order]}}``."""
    out = {}
    for name in names:
        cfg = base(name)
        lr, sweep = sweep_lr(runner, cfg, lrs(name), seed=seeds[0], run_id=lambda lr, n=name: run_id(n, lr, seeds[0]))
        ids = []
        for seed in seeds:
            rid = run_id(name, lr, seed)
            runner.run(rid, dataclasses.replace(cfg, lr=lr, seed=seed))
            ids.append(rid)
        out[name] = {"lr": lr, "sweep": sweep, "runs": ids}
    return out


# ---------------------------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Verdict:
    """The outcome of :func:`verdict`. ``diff`` = mean(a) - mean(b); ``low``/``high`` its 95% interval; the
    claim is that the difference is > 0 (``direction="greater"``) or < 0 (``"less"``)."""

    claim: str
    verdict: str
    diff: float
    low: float
    high: float
    direction: str
    test: str
    n_a: int
    n_b: int
    threshold: float | None = None  # b was a number: mean(a) - threshold

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        side = ">" if self.direction == "greater" else "<"
        what = "difference" if self.threshold is None else f"mean − {self.threshold:g}"
        n = f"n = {self.n_a} vs {self.n_b}" if self.threshold is None else f"n = {self.n_a}"
        return (f"**{self.verdict}** — {self.claim}: {what} {self.diff:+.4g}, 95% CI [{self.low:+.4g}, "
                f"{self.high:+.4g}] (claimed {side} 0; {self.test}, {n})")


def welch_interval(a: Sequence[float], b: Sequence[float] | float,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval (unequal variances, Welch–Satterthwaite degrees of
    freedom); ``b`` a number: the one-sample t interval of mean(a) - b. Fewer than 2 values on a side: the
    interval is (-inf, inf). Zero variance on both sides: the interval is the point itself."""
    from scipy import stats

    if isinstance(b, (int, float)):  # one sample against a constant: the t interval of mean(a) - b
        diff, n = statistics.fmean(a) - b, len(a)
        if n < 2:
            return diff, -math.inf, math.inf
        se = statistics.stdev(a) / math.sqrt(n)
        if se == 0:
            return diff, diff, diff
        t = float(stats.t.ppf(0.5 + level / 2, n - 1))
        return diff, diff - t * se, diff + t * se
    na, nb = len(a), len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if na < 2 or nb < 2:
        return diff, -math.inf, math.inf
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = float(stats.t.ppf(0.5 + level / 2, df))
    return diff, diff - t * se, diff + t * se


def bootstrap_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): percentile bootstrap, each group resampled with replacement."""
    import numpy as np

    if isinstance(b, (int, float)):
        b = [float(b)] * 2  # a constant: resampling it changes nothing
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, -math.inf, math.inf
    rng = np.random.default_rng(seed)
    boot = (a[rng.integers(0, len(a), (resamples, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (resamples, len(b)))].mean(1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return diff, float(lo), float(hi)


def exact_interval(a: Sequence[float], b: Sequence[float] | float) -> tuple[float, float, float]:
    """(mean(a) - mean(b), diff, diff) for deterministic quantities (parameter and FLOP counts, receptive
    fields): no sampling, so the interval is the point. ``ValueError`` if a side holds different values."""
    b_vals = [float(b)] if isinstance(b, (int, float)) else list(b)
    for side in (list(a), b_vals):
        if len(set(side)) > 1:
            raise ValueError(f"the exact test compares deterministic values, got differing values {side}")
    diff = float(a[0]) - b_vals[0]
    return diff, diff, diff


TESTS = {"welch": ("Welch t 95% CI of the difference of means", welch_interval),
         "bootstrap": ("percentile bootstrap 95% CI of the difference of means", bootstrap_interval),
         "exact": ("exact comparison of deterministic counts (no sampling: the 95% CI is the point)", exact_interval)}


def verdict(a: Sequence[float], b: Sequence[float] | float, direction: str, claim: str = "",
            test: str = "welch") -> Verdict:
    """Is mean(a) - mean(b) > 0 (``direction="greater"``) or < 0 (``"less"``), as claimed? ``b`` may be a number
    (a threshold: one-sample interval). ``supported`` if the 95% interval of the difference excludes 0 on the
    claimed side, ``not supported`` if it excludes 0 on the other side, ``mixed`` if it contains 0 (or there are
    too few values for an interval: one seed)."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {sorted(TESTS)}, got {test!r}")
    one_sample = isinstance(b, (int, float))
    if not len(a) or (not one_sample and not len(b)):
        raise ValueError("verdict needs at least one value on each side")
    name, interval = TESTS[test]
    if one_sample:
        name = name.replace("difference of means", "mean minus a threshold")
    diff, lo, hi = interval(list(a), float(b) if one_sample else list(b))
    sign = 1 if direction == "greater" else -1
    s_lo, s_hi = sorted((sign * lo, sign * hi))
    if s_lo > 0:
        outcome = "supported"
    elif s_hi < 0:
        outcome = "not supported"
    else:
        outcome = "mixed"
    return Verdict(claim, outcome, diff, lo, hi, direction, name, len(a), 1 if one_sample else len(b),
                   float(b) if one_sample else None)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = list(values)
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` (std over seeds; 0 for one value)."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# ------------------------------------------------------------------------------------------------- outputs


@dataclasses.dataclass
class Claim:
    """What an experiment tests: the lecture's words (Russian, quoted) and their English gloss, and what the
    literature reports (paper, figure/table, number)."""

    lecture_ru: str
    lecture_en: str
    literature: str


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out: pathlib.Path, name: str, budget: str, claim: Claim, setup: str, measured: str,
                  verdicts: Sequence[Verdict], results: dict, pngs: Sequence[str] = (), notes: str = "") -> str:
    """Write ``out/results.json`` (``results`` plus the claim and the verdicts) and ``out/table.md``; return the
    table's text."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"experiment": name, "budget": budget, "claim": dataclasses.asdict(claim),
               "verdicts": [v.to_dict() for v in verdicts], **results}
    write_atomic(out / "results.json", json.dumps(payload, indent=2, default=_json_default))
    parts = [f"### `{name}` (budget `{budget}`)", "",
             f"**Lecture:** «{claim.lecture_ru}»", "", f"*({claim.lecture_en})*", "",
             f"**Literature:** {claim.literature}", "", f"**Setup:** {setup}", "", "**Measured:**", "", measured, "",
             "**Verdicts** (computed from the numbers above):", ""]
    parts += [f"- {v.line()}" for v in verdicts]
    if notes:
        parts += ["", notes]
    if pngs:
        parts += [""] + [f"![{p}]({p})" for p in pngs]
    text = "\n".join(parts) + "\n"
    write_atomic(out / "table.md", text)
    return text


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
