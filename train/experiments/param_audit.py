"""``python -m train.experiments param-audit``: where the parameters and the FLOPs of the classic nets are.

Nothing is trained: every number is counted from the models' own layer shapes (``jax.eval_shape``, nothing is
computed), so one seed is the whole answer and the verdicts use the runner's ``exact`` test.

1. **Conv vs dense.** :func:`cnnjax.summary.subtotals` of AlexNet, VGG-16, GoogLeNet (without its auxiliary
   heads, as torchvision counts its 6.6M) and ResNet-50 at 224x224: parameters and FLOPs (a multiply-add is 2)
   in convolutions, dense layers (a linear layer on a flat vector) and normalisation.
2. **3x3 stacks vs one big kernel** (VGG's argument): for receptive fields 5, 7, 11 (and 3..15 in the plot),
   ``(r - 1) / 2`` stacked 3x3 convolutions against one r x r convolution, C -> C channels without bias: their
   parameters counted from the built modules and their receptive fields traced by
   :func:`cnnjax.analysis.receptive_field` (not assumed from the formula).
3. **The 1x1 reduction of Inception** (GoogLeNet's inception3a, 192 -> 256 channels on 28x28): the block as built
   against the same block with the 3x3 and "5x5" convolutions applied to the 192 input channels directly.
   torchvision's (and so cnnjax's) "5x5" branch is a 3x3 convolution (a long-standing quirk kept for weight
   compatibility); the paper's 5x5 is counted too.

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/param_audit.png``.
"""

from __future__ import annotations

import functools
import math
import pathlib

from train.experiments import runner as R

NAME = "param-audit"
ARCHS = ("alexnet", "vgg16", "googlenet", "resnet50")
FIELDS = (5, 7, 11)  # receptive fields of the verdicts; the plot covers 3..15
SIZE = 224  # every budget: counting takes seconds (parameters do not depend on it, adaptive pools; FLOPs do)
WIDTH = 64  # channels C of the kernel comparison (the parameters scale with C^2)

CLAIM = R.Claim(
    lecture_ru="[AlexNet] Большая часть вычислительных мощностей тратилась на сверточные блоки, при этом большинство "
               "параметров содержалось в линейных слоях. […] В модели VGG стандартизировали все свертки (все они с "
               "ядром размера 3), благодаря чему большая часть параметров хранится в сверточных слоях, в отличие от "
               "AlexNet. […] для достижения receptive field размера 5, мы можем взять 2 свертки размера 3 (то есть "
               "18 параметров) или одну свертку размера 5 (25 параметров). […] используются свертки с ядром "
               "размера 1, так как благодаря им получается уменьшить число каналов на вход сверткам размера 3 и 5 "
               "(уменьшить число параметров в них).",
    lecture_en="[AlexNet] Most of the compute went into the convolutional blocks, while most parameters were in the "
               "linear layers. […] VGG standardised all convolutions (all 3x3), thanks to which most of its "
               "parameters are in convolutional layers, unlike AlexNet. […] For a receptive field of 5 we can take "
               "two 3x3 convolutions (18 parameters) or one 5x5 (25). […] [GoogLeNet] uses 1x1 convolutions to "
               "reduce the channels going into the 3x3 and 5x5 convolutions (fewer parameters in them).",
    literature="Krizhevsky et al. 2012 (60M parameters, 5 conv + 3 dense layers); Simonyan & Zisserman 2015, §2.3 "
               "(a stack of three 3x3 layers has 27C² weights vs 49C² for one 7x7; VGG-16 has 138M parameters, "
               "Table 2); Szegedy et al. 2014, §4 (1x1 convolutions 'as dimension reduction modules to remove "
               "computational bottlenecks'); torchvision's published counts: AlexNet 61.1M, VGG-16 138.4M, "
               "GoogLeNet 6.6M, ResNet-50 25.6M.",
)


def arch_split(arch: str, image_size: int) -> dict:
    """``{"params", "flops", "groups": subtotals, "largest": (path, params) of the largest layer}`` of ``arch``
    (1000 classes) at ``image_size``."""
    from cnnjax import models, summary

    opts = {"aux_logits": False} if arch == "googlenet" else {}
    rows, totals = summary.summarize(models.create(arch, **opts), image_size)
    big = max(rows, key=lambda r: r.params)
    return {"params": totals["params"], "flops": totals["flops"], "groups": summary.subtotals(rows, totals),
            "largest": (big.path, big.params)}


def share(split: dict, group: str, what: str) -> float:
    """The fraction of ``split``'s ``what`` ("params" or "flops") in layer group ``group``."""
    total = sum(g[what] for g in split["groups"].values())
    return split["groups"][group][what] / total


@functools.cache
def _stack_module(kernel: int, layers: int, channels: int):
    import flax.linen as nn

    from cnnjax import nn as cnn

    class Stack(nn.Module):
        """``layers`` kxk convolutions, C -> C, no bias, ReLU between (NHWC in and out)."""

        in_channels: int = channels

        @nn.compact
        def features(self, x, train: bool = False):
            del train
            for i in range(layers):
                x = cnn.Conv(channels, kernel, use_bias=False, name=f"conv{i}")(x)
                x = nn.relu(x) if i < layers - 1 else x
            return x

    return Stack()


def kernel_cost(kernel: int, layers: int, channels: int = WIDTH) -> dict:
    """Parameters (counted from the built module) and receptive field (traced) of ``layers`` stacked
    ``kernel`` x ``kernel`` convolutions, ``channels`` -> ``channels``, and the parameters per C²."""
    import jax
    import jax.numpy as jnp

    from cnnjax.analysis import receptive_field

    model = _stack_module(kernel, layers, channels)
    size = 2 * kernel * layers  # large enough for a valid output
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, method="features"), x)
    params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    field = receptive_field(model, size)[-1].size[0]
    return {"kernel": kernel, "layers": layers, "params": params, "per_c2": params / channels**2, "field": field}


def block_branches(block: list) -> tuple[int, dict[str, tuple[int, int]]]:
    """From an Inception block's summary rows: its input channels (the 4th branch's pool passes them through) and
    each branch's last convolution as ``{branch: (output channels, kernel side)}`` (kernel side from the
    bias-free conv's parameter count k*k*C_in*C_out, C_in the branch's previous conv's output)."""
    cin = next(r.output_shape[-1] for r in block if r.kind == "MaxPool2d")
    branches: dict[str, tuple[int, int]] = {}
    prev: dict[str, int] = {}
    for r in block:
        if r.kind != "Conv":
            continue
        branch = r.path.split("/")[1].split("_")[0]
        c_in, c_out = prev.get(branch, cin), r.output_shape[-1]
        branches[branch] = (c_out, round(math.sqrt(r.params / (c_in * c_out))))
        prev[branch] = c_out
    return cin, branches


def inception_saving(image: int = 28) -> dict:
    """inception3a as built (parameters and FLOPs from the GoogLeNet summary, 28x28 at a 224 input) against the
    same branches without the 1x1 reductions, the 3x3 and "5x5" convolutions on the 192 input channels (counted
    from built modules; conv + BN parameters; the widths and kernels read off the summary's rows)."""
    from cnnjax import models, summary

    model = models.create("googlenet", aux_logits=False)
    rows, _ = summary.summarize(model, 224)
    block = [r for r in rows if r.path.startswith("inception3a/")]
    built = {"params": sum(r.params for r in block), "flops": sum(r.flops for r in block)}
    cin, branches = block_branches(block)

    def conv_bn(cout: int, k: int) -> tuple[int, int]:  # bias-free conv + BN (scale, bias), FLOPs at image^2
        return k * k * cin * cout + 2 * cout, 2 * image * image * cout * k * k * cin

    def direct(five: int) -> dict:
        parts = [conv_bn(c, five if name == "branch3" else k) for name, (c, k) in branches.items()]
        return {"params": sum(p for p, _ in parts), "flops": sum(f for _, f in parts)}

    return {"built": built, "without_1x1": direct(3), "without_1x1_paper_5x5": direct(5),
            "layers": [(r.path, r.kind, r.params, r.flops) for r in block]}


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    del seeds  # deterministic counts: no seeds
    if budget_name not in R.BUDGETS:
        raise ValueError(f"unknown budget {budget_name!r}; valid: {', '.join(R.BUDGETS)}")
    out, size = pathlib.Path(out), SIZE
    splits = {}
    for arch in ARCHS:
        splits[arch] = arch_split(arch, size)
        log(f"[param-audit] {arch}: {splits[arch]['params']:,} parameters, conv share "
            f"{share(splits[arch], 'conv', 'params'):.3f} of parameters, {share(splits[arch], 'conv', 'flops'):.3f} "
            "of FLOPs")
    kernels = {r: {"stack": kernel_cost(3, (r - 1) // 2), "single": kernel_cost(r, 1)} for r in range(3, 16, 2)}
    inception = inception_saving()
    verdicts = _verdicts(splits, kernels, inception)
    measured = _tables(splits, kernels, inception, size)
    png = _plot(out / "param_audit.png", splits, kernels)
    setup = (f"parameters and FLOPs counted from the models' layer shapes at {size}x{size} (1000 classes; "
             f"`jax.eval_shape`, nothing trained or computed); kernel stacks with C = {WIDTH} channels, no bias; "
             "receptive fields traced by `cnnjax.analysis.receptive_field`")
    notes = _notes(splits, kernels, inception)
    results = {"image_size": size, "splits": splits, "kernels": {str(k): v for k, v in kernels.items()},
               "inception3a": inception}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, pngs=[png.name], notes=notes)
    return results


def _verdicts(splits: dict, kernels: dict, inception: dict) -> list[R.Verdict]:
    def exact(value: float, than: float, direction: str, claim: str, threshold: bool = False) -> R.Verdict:
        """``value`` against a threshold (a share against 0.5) or against another count (a difference)."""
        return R.verdict([value], float(than) if threshold else [than], direction, claim, test="exact")

    v = [exact(share(splits["alexnet"], "conv", "flops"), 0.5, "greater", "AlexNet spends most FLOPs in convolutions",
               True),
         exact(share(splits["alexnet"], "dense", "params"), 0.5, "greater",
               "AlexNet keeps most parameters in dense layers", True),
         exact(share(splits["vgg16"], "conv", "params"), 0.5, "greater",
               "VGG-16 keeps most parameters in convolutions (the lecture's reading)", True),
         exact(share(splits["vgg16"], "conv", "params"), share(splits["alexnet"], "conv", "params"), "greater",
               "VGG-16's conv share of parameters is larger than AlexNet's (a weaker reading)")]
    for r in FIELDS:
        stack, single = kernels[r]["stack"], kernels[r]["single"]
        if stack["field"] != single["field"] or stack["field"] != r:
            raise AssertionError(f"traced receptive fields {stack['field']} / {single['field']} != {r}")
        v.append(exact(stack["params"], single["params"], "less",
                       f"{stack['layers']} stacked 3x3 convs need fewer parameters than one {r}x{r} (same traced "
                       f"field {r})"))
    v.append(exact(inception["built"]["params"], inception["without_1x1"]["params"], "less",
                   "inception3a's 1x1 reductions lower its parameters"))
    return v


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _tables(splits: dict, kernels: dict, inception: dict, size: int) -> str:
    rows = [[arch, f"{s['params'] / 1e6:.2f}M", *(_pct(share(s, g, "params")) for g in ("conv", "dense", "norm")),
             f"{s['flops'] / 1e9:.2f}G", *(_pct(share(s, g, "flops")) for g in ("conv", "dense"))]
            for arch, s in splits.items()]
    split = R.markdown_table(["model", "params", "conv", "dense", "norm", f"FLOPs at {size}px", "conv", "dense"],
                             rows)
    krows = [[r, f"{k['stack']['layers']} x 3x3", f"{k['stack']['per_c2']:.0f}·C²", f"{r}x{r}",
              f"{k['single']['per_c2']:.0f}·C²", f"{k['stack']['params'] / k['single']['params']:.2f}",
              f"{k['stack']['field']:.0f} / {k['single']['field']:.0f}"] for r, k in kernels.items() if r > 3]
    kern = R.markdown_table(["field", "stack", "params", "one kernel", "params", "ratio", "traced field"], krows)
    inc = R.markdown_table(["inception3a (192 -> 256 ch, 28x28)", "params", "FLOPs"],
                           [[name, f"{d['params']:,}", f"{d['flops'] / 1e6:.1f}M"] for name, d in (
                               ("as built (1x1 reductions 96 and 16)", inception["built"]),
                               ("without the 1x1 reductions (torchvision's 3x3 '5x5')", inception["without_1x1"]),
                               ("without the 1x1 reductions (the paper's 5x5)", inception["without_1x1_paper_5x5"]))])
    return "\n\n".join([split, kern, inc])


def _notes(splits: dict, kernels: dict, inception: dict) -> str:
    vgg, alex = splits["vgg16"], splits["alexnet"]
    k5 = kernels[5]
    return (f"Reading: the lecture is right about AlexNet ({_pct(share(alex, 'dense', 'params'))} of its parameters "
            f"are in the three dense layers, {_pct(share(alex, 'conv', 'flops'))} of its FLOPs in the convolutions) "
            f"but wrong about VGG-16: by its own layer shapes only {_pct(share(vgg, 'conv', 'params'))} of its "
            f"{vgg['params'] / 1e6:.1f}M parameters are in convolutions "
            f"({vgg['groups']['conv']['params'] / 1e6:.1f}M vs {vgg['groups']['dense']['params'] / 1e6:.1f}M in "
            f"the dense head, {vgg['largest'][1] / 1e6:.1f}M of it in one layer, `{vgg['largest'][0]}`, the first "
            "on the flattened 7x7x512 map). VGG's 3x3 convolutions do make the conv *share* larger than AlexNet's, "
            "and the "
            "lecture's per-kernel arithmetic holds exactly: two 3x3 layers cost "
            f"{k5['stack']['per_c2']:.0f}·C² against {k5['single']['per_c2']:.0f}·C² for one 5x5 with the same "
            "traced receptive field (and add a non-linearity between them). The architectures that do keep their "
            "parameters in convolutions are the ones that dropped the big dense head for global average pooling "
            "(GoogLeNet, ResNet-50). The 1x1 reductions cut inception3a's parameters "
            f"{inception['without_1x1']['params'] / inception['built']['params']:.1f}x "
            f"({inception['without_1x1_paper_5x5']['params'] / inception['built']['params']:.1f}x with the paper's "
            "5x5).")


def _plot(path: pathlib.Path, splits: dict, kernels: dict) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{a}\n{what}" for a in splits for what in ("params", "FLOPs")]
    bottom = [0.0] * len(labels)
    for group, color in (("conv", "tab:blue"), ("dense", "tab:orange"), ("norm", "tab:green"), ("other", "tab:gray")):
        vals = [share(s, group, what) for s in splits.values() for what in ("params", "flops")]
        ax1.bar(range(len(labels)), vals, bottom=bottom, color=color, label=group)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_xticks(range(len(labels)), labels, fontsize=8)
    ax1.set_ylabel("share")
    ax1.set_title("where parameters and FLOPs are")
    ax1.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fields = sorted(kernels)
    ax2.plot(fields, [kernels[r]["stack"]["per_c2"] for r in fields], "o-", label="stack of 3x3 convs")
    ax2.plot(fields, [kernels[r]["single"]["per_c2"] for r in fields], "s-", label="one r x r conv")
    ax2.set_xlabel("receptive field r (traced)")
    ax2.set_ylabel("parameters / C²")
    ax2.set_yscale("log")
    ax2.set_title("same receptive field, different cost")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
