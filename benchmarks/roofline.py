"""Rooflines of the benchmarked shapes: FLOPs, minimal bytes, each execution model's bound, and each measured
variant's time against the bound of the model it runs.

Execution models (time bound = max(FLOPs / matmul peak, bytes / bandwidth), kernels assumed perfectly overlapped):
- logits: the decoder's matmuls as IEEE float32 cuBLAS GEMMs (what naive, naive+compile and the fused-* losses run;
  no TF32 is enabled anywhere) and the [k, B, P] logits written and read back (the benchmarks' own byte counts).
- fused-head: the decoder head as one Triton kernel with tf32x3 dots (3 TF32 products per float32 product) and
  no logits in memory: it moves only the inputs, the parameters and their gradients.
- fused-mlp (bench_eval): the whole decoder as one Triton kernel with tf32x3 dots; per sample only z and the
  log-weight move.
bfloat16 results take the BF16 peak in both models. Bandwidth: the copy bandwidth measured in the same run where
the results record it, else the HBM peak. pct_of_bound = 100 * bound / measured: 100% means at the roofline.

    python benchmarks/roofline.py                                   # the committed H100 results
    python benchmarks/roofline.py --results benchmarks/results/<device>
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, table_cell  # noqa: E402

# Dense peaks, FLOP/s, and the HBM bandwidth, GB/s, of the devices with committed results.
PEAKS = {"NVIDIA H100 80GB HBM3": {"fp32": 67e12, "tf32": 495e12, "bf16": 990e12, "hbm_gbps": 3350.0}}
# The paper's 1-layer model (bench_eval): encoder 784-200-200-(50 mean, 50 logvar), decoder 50-200-200-784, tanh.
EVAL_ENCODER = (784, 200, 200, 100)
EVAL_DECODER = (50, 200, 200, 784)


def bound_ms(flops, flop_rate, nbytes, bandwidth_gbps):
    return max(flops / flop_rate, nbytes / (bandwidth_gbps * 1e9)) * 1e3


def _matmul_rate(peaks, dtype, model):
    """FLOP/s of one float32-equivalent product in ``model``: tf32x3 costs 3 TF32 products."""
    if dtype == "bfloat16":
        return peaks["bf16"]
    return peaks["tf32"] / 3 if model in ("fused-head", "fused-mlp") else peaks["fp32"]


def model_of(variant):
    return "fused-head" if "head" in variant else "logits"


def loss_roofline(row, device, bandwidth_gbps=None):
    """FLOPs, minimal bytes and bound of bench_loss ``row``'s forward+backward in its variant's model, and the
    measured time as a percentage of it; {} for a device without known peaks.

    Shapes: R = k B rows, latent D, observed P. FLOPs 6 R D P (the three matmuls of a linear decoder).
    """
    peaks = PEAKS.get(device)
    if peaks is None:
        return {}
    k, batch, dim, obs = row["k"], row["B"], row["D"], row["P"]
    rows, element = k * batch, 2 if row.get("dtype") == "bfloat16" else 4
    model = model_of(row["variant"])
    flops = 6 * rows * dim * obs
    if model == "logits":  # bench_loss's own count: z and the logits written and read, their gradients
        nbytes = element * (6 * rows * obs + 5 * rows * dim)
    else:  # mu, logvar, x, W, b read; the loss, dmu, dlogvar, dW, db written; z only as in-kernel noise
        nbytes = element * (4 * batch * dim + batch * obs + 2 * (obs * dim + obs) + 2 * rows)
    bandwidth = bandwidth_gbps or peaks["hbm_gbps"]
    bound = bound_ms(flops, _matmul_rate(peaks, row.get("dtype"), model), nbytes, bandwidth)
    measured = row.get("fwd_bwd_ms")
    return {"model": model, "gflop": flops / 1e9, "min_mb": nbytes / 1e6, "bound_ms": bound,
            "pct_of_bound": 100 * bound / measured if measured else None}


def eval_roofline(row, device, model):
    """The same for a bench_eval ``row`` (the 1-layer paper model, no gradients) in execution ``model``."""
    peaks = PEAKS.get(device)
    if peaks is None:
        return {}
    samples = row["images"] * row["k"]
    pairs = list(zip(EVAL_DECODER, EVAL_DECODER[1:]))
    hidden_flops = 2 * samples * sum(a * b for a, b in pairs[:-1]) + 2 * row["images"] * sum(
        a * b for a, b in zip(EVAL_ENCODER, EVAL_ENCODER[1:]))
    head_flops = 2 * samples * EVAL_DECODER[-2] * EVAL_DECODER[-1]
    # Per sample: z written and read, then the log-weight; each hidden layer's matmul output and tanh written and
    # read, unless the MLP is fused; the logits written and read, unless the head or the MLP fuses them away.
    floats = 2 * EVAL_DECODER[0] + 2
    floats += 0 if model == "fused-mlp" else 4 * sum(EVAL_DECODER[1:-1])
    floats += 2 * EVAL_DECODER[-1] if model == "logits" else 0
    hidden_rate = peaks["tf32"] / 3 if model == "fused-mlp" else peaks["fp32"]
    compute_s = hidden_flops / hidden_rate + head_flops / _matmul_rate(peaks, "float32", model)
    nbytes = 4 * floats * samples
    bound = 1e3 * max(compute_s, nbytes / (peaks["hbm_gbps"] * 1e9))
    return {"model": model, "gflop": (hidden_flops + head_flops) / 1e9, "min_mb": nbytes / 1e6, "bound_ms": bound,
            "pct_of_bound": 100 * bound / (1e3 * row["wall_s"])}


def copy_bandwidth(folder, result):
    """The copy bandwidth (GB/s) the bench_loss run measured: in its JSON, or in its markdown's notes (older runs)."""
    if result.get("copy_gbps"):
        return result["copy_gbps"]
    match = re.search(r"copy bandwidth measured in this run: ([\d.]+) GB/s", (folder / "bench_loss.md").read_text())
    return float(match.group(1)) if match else None


def eval_model(variant, variants):
    """The execution model a bench_eval variant ran. The first committed run named the fused head ``fused`` and
    the logits path ``fused-logits`` (see the results' README); today ``fused-head``, ``fused-mlp`` and ``fused``."""
    if variant == "fused-mlp":
        return "fused-mlp"
    return "fused-head" if "head" in variant or (variant == "fused" and "fused-logits" in variants) else "logits"


def tables(folder):
    loss = json.loads((folder / "bench_loss.json").read_text())
    device, bandwidth = loss["device"], copy_bandwidth(folder, loss)
    rows = []
    for row in loss["rows"]:
        if row.get("fwd_bwd_ms"):
            rows.append({"bench": "bench_loss fwd+bwd", "shape": f"k={row['k']} B={row['B']} D={row['D']}",
                         "variant": row["variant"], "measured_ms": row["fwd_bwd_ms"],
                         **loss_roofline(row, device, bandwidth)})
    eval_path = folder / "bench_eval.json"
    if eval_path.exists():
        result = json.loads(eval_path.read_text())
        variants = {row["variant"] for row in result["rows"]}
        for row in result["rows"]:
            if "ais_steps" in row:  # AIS rows: no roofline model (and a median_ms, not a wall_s)
                continue
            rows.append({"bench": "bench_eval", "shape": f"{row['images']} images k={row['k']}",
                         "variant": row["variant"], "measured_ms": 1e3 * row["wall_s"],
                         **eval_roofline(row, device, eval_model(row["variant"], variants))})
    return device, bandwidth, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS / "NVIDIA_H100_80GB_HBM3")
    args = parser.parse_args()
    device, bandwidth, rows = tables(args.results)
    peaks = PEAKS[device]
    columns = ["bench", "shape", "variant", "model", "gflop", "min_mb", "bound_ms", "measured_ms", "pct_of_bound"]
    fmt = lambda v: table_cell(v, digits=3)
    lines = [f"# Roofline of the {device} results", "",
             f"- peaks: FP32 {peaks['fp32'] / 1e12:g}, TF32 {peaks['tf32'] / 1e12:g}, BF16 {peaks['bf16'] / 1e12:g} "
             f"TFLOP/s dense; HBM {peaks['hbm_gbps']:g} GB/s; copy bandwidth measured by bench_loss: "
             f"{fmt(bandwidth)} GB/s (bench_loss bounds use it, bench_eval's the HBM peak)",
             "- models: logits = float32 GEMMs + the logits in memory; fused-head = tf32x3 dots, no logits "
             "(see benchmarks/roofline.py); pct_of_bound = 100 * bound / measured",
             "- command: `python benchmarks/roofline.py`", "",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    (args.results / "roofline.md").write_text("\n".join(lines) + "\n")
    (args.results / "roofline.json").write_text(json.dumps({"device": device, "peaks": peaks,
                                                            "copy_gbps": bandwidth, "rows": rows}, indent=1))
    print("\n".join(lines[6:]))


if __name__ == "__main__":
    main()
