"""The design choices that wait on a GPU measurement, and the figure that decides each, read from a device's
results folder (benchmarks/results/<device>/, as gpu_plan.sh leaves it): markdown on stdout, for gpu_plan.md.

    python benchmarks/plan_decisions.py benchmarks/results/NVIDIA_H200

A figure not measured yet says which plan stage measures it.
"""

import json
import sys
from pathlib import Path

PLAN_SHAPES = [(50, 128), (5000, 128), (5000, 1024)]  # (k, B): bench_loss's shapes in the plan's first call


def load(path):
    """The rows of a benchmark's JSON, or None where it is not there (yet)."""
    return json.loads(path.read_text())["rows"] if path.exists() else None


def first(folder, pattern):
    """The one file matching ``pattern`` under ``folder`` (the plan's subfolders), or a path that does not exist."""
    found = sorted(folder.glob(pattern))
    return found[-1] if found else folder / "missing"


def loss_ms(rows, variant, k, batch, dim=50, column="fwd_bwd_ms"):
    for row in rows or ():
        if (row["variant"], row["k"], row["B"], row["D"]) == (variant, k, batch, dim) and row.get(column):
            return row[column]
    return None


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def fmt(value, unit=""):
    return "-" if value is None else f"{value:.3g}{unit}"


def decisions(folder):
    """The markdown lines: one section per pending choice, its rule and its figures."""
    folder = Path(folder)
    loss = load(folder / "bench_loss.json")
    evaluation = load(folder / "bench_eval.json")
    train = load(folder / "bench_train_step.json")
    head_h200 = load(first(folder, "gpu_plan-*/head_h200/*/bench_loss.json"))
    with_cuda = load(first(folder, "gpu_plan-*/with_cuda/*/bench_loss.json"))
    lines = ["## Design choices waiting on these figures", ""]

    def missing(stage):
        lines.extend([f"- not measured yet: stage `{stage}` measures it", ""])

    lines += ["### The Triton path against torch.compile (the default path; issue 15's target >= 3x compile)",
              "fused-triton's forward+backward (bench_loss) over naive+compile's, each a time ratio (above 1x: "
              "compile is faster).", ""]
    if loss is None:
        missing("bench_loss")
    else:
        lines += ["| k | B | naive ms | naive+compile / naive | fused-triton / naive+compile |", "| --- | --- | --- | --- | --- |"]
        for k, batch in PLAN_SHAPES:
            naive, compiled = loss_ms(loss, "naive", k, batch), loss_ms(loss, "naive+compile", k, batch)
            lines.append(f"| {k} | {batch} | {fmt(naive)} | {ratio(compiled, naive)} | "
                         f"{ratio(loss_ms(loss, 'fused-triton', k, batch), compiled)} |")
        lines.append("")

    lines += ["### `PaperModel(fused_head=...)` default (off): the fused decoder head",
              "Rule: on by default only if fused-head-triton's forward+backward is at most fused-triton's at the "
              "training shapes (k=50 and k=5000, B=128); else it stays the memory option (its peak against "
              "fused-triton's). Also bench_train_step's fused-head rows (H=200 there).", ""]
    if loss is None:
        missing("bench_loss")
    else:
        lines += ["| k | B | fused-head / fused-triton (time) | fused-head / naive+compile | peak MiB head / fused |",
                  "| --- | --- | --- | --- | --- |"]
        for k, batch in PLAN_SHAPES:
            head = loss_ms(loss, "fused-head-triton", k, batch)
            lines.append(f"| {k} | {batch} | {ratio(head, loss_ms(loss, 'fused-triton', k, batch))} | "
                         f"{ratio(head, loss_ms(loss, 'naive+compile', k, batch))} | "
                         f"{fmt(loss_ms(loss, 'fused-head-triton', k, batch, column='peak_mib'))} / "
                         f"{fmt(loss_ms(loss, 'fused-triton', k, batch, column='peak_mib'))} |")
        lines.append("")
    if train is None:
        missing("bench_train_step")
    else:
        steps = {(r["layers"], r["B"], r["variant"]): r["step_ms"] for r in train if r["k"] == 50}
        for (layers, batch, variant), ms in sorted(steps.items()):
            if variant.startswith("fused-head"):
                fused = steps.get((layers, batch, variant.replace("fused-head", "fused")))
                lines.append(f"- train step, {layers} layer(s), B={batch}, {variant}: {fmt(ms, ' ms')}, "
                             f"{ratio(ms, fused)} of {variant.replace('fused-head', 'fused')}")
        lines.append("")

    lines += ["### The head's two-pass float32 backward at 128 < H <= 256 (8 R H P FLOPs instead of 6)",
              "Figure: fused-head-triton's backward (forward+backward minus forward) over its forward, at H=200 "
              "(stage bench_head_h200) against H=50 (bench_loss, one pass). Above 8/6 = 1.33 times the H=50 "
              "ratio: measure the one-pass design (101b539, dh in registers) against it.", ""]
    if head_h200 is None or loss is None:
        missing("bench_head_h200" if head_h200 is None else "bench_loss")
    else:
        for k, batch in PLAN_SHAPES[:2]:
            per_dim = []
            for rows, dim in ((loss, 50), (head_h200, 200)):
                fwd = loss_ms(rows, "fused-head-triton", k, batch, dim, "fwd_ms")
                both = loss_ms(rows, "fused-head-triton", k, batch, dim)
                per_dim.append((both - fwd) / fwd if fwd and both else None)
            growth = per_dim[1] / per_dim[0] if None not in per_dim and per_dim[0] else None
            lines.append(f"- k={k}, B={batch}: backward/forward {fmt(per_dim[0])} at H=50, {fmt(per_dim[1])} at "
                         f"H=200: {fmt(growth)} times (decides at 1.33)")
        lines.append("")

    lines += ["### `PaperModel(fused_mlp=...)` default for evaluation (off; the CLI's --fused-mlp)",
              "Rule: on by default for evaluation if bench_eval's fused-mlp wall time is under fused's (and "
              "compare with naive+compile's).", ""]
    if evaluation is None:
        missing("bench_eval")
    else:
        walls = {r["variant"]: r.get("wall_s") for r in evaluation}
        peaks = {r["variant"]: r.get("peak_mib_per_batch") for r in evaluation}
        if "fused-mlp" not in walls:
            lines.append("- this bench_eval.json has no fused-mlp row (older than the fused MLP): rerun bench_eval")
        for variant in walls:
            lines.append(f"- {variant}: {fmt(walls[variant], ' s')}, {fmt(peaks[variant], ' MiB/batch')}"
                         + (f"; fused-mlp / this: {ratio(walls.get('fused-mlp'), walls[variant])}"
                            if variant != "fused-mlp" and "fused-mlp" in walls else ""))
        lines.append("")

    lines += ["### `ops.utils.PERSISTENT_PROGRAMS_PER_SM = 2` (the head's and the MLP's persistent grids)",
              "Figure: bench_eval's fused-mlp and bench_loss's fused-head times at 1, 2 and 4 programs per SM "
              "(the MLP's scratch grows with it). No stage of this plan varies it: a sweep after the rows above.",
              ""]

    lines += ["### Whether the CUDA C++ backend stays (issue 14): fused-cuda against fused-triton",
              "Figure: stage bench_loss_cuda's fused-cuda / fused-triton forward+backward.", ""]
    if with_cuda is None:
        missing("bench_loss_cuda")
    else:
        for k, batch in PLAN_SHAPES:
            lines.append(f"- k={k}, B={batch}: fused-cuda / fused-triton "
                         f"{ratio(loss_ms(with_cuda, 'fused-cuda', k, batch), loss_ms(with_cuda, 'fused-triton', k, batch))}")
        lines.append("")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/plan_decisions.py RESULTS_FOLDER")
    print("\n".join(decisions(sys.argv[1])))
