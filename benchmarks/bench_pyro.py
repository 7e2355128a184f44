"""One Pyro SVI step (loss, backward, Adam) through this library's Pyro front door against Pyro's own ELBOs.

The model and guide are Pyro's VAE tutorial's, as examples/pyro_vae.py trains them (MLP encoder and decoder,
softplus, z_dim 50, hidden 400, a Bernoulli likelihood over 784 pixels, every site in the "data" plate), on one
batch of random binary images at MNIST's pixel density (the times do not depend on the pixels). Variants, each an
SVI with pyro.optim.Adam (lr 1e-3) on its own copy of the same initial networks, k particles vectorized:

    renyi   pyro.infer.RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True): Pyro's IWAE bound (the baseline)
    iwae    iwae_kernels.pyro.ImportanceWeightedELBO(num_particles=k, estimator="iwae")
    dreg    ImportanceWeightedELBO(num_particles=k, estimator="dreg")
    trace   pyro.infer.Trace_ELBO(num_particles=k, vectorize_particles=True): the k-sample ELBO, for scale

Before timing, the bound's value of renyi, iwae and dreg (all L_k per example, summed over the batch) is checked to
agree within Monte Carlo error at the initial weights (the mean of 20 draws each); loss_at_start records it per
image (trace's is the ELBO, below L_k). Pyro is an optional dependency (pip install pyro-ppl): without it the
script says so and measures nothing (exit 0).

    python benchmarks/bench_pyro.py                  # CPU: k in {5, 50}; GPU: k in {50, 500}; B = 100
    python benchmarks/bench_pyro.py --k 50 --batch 100 --variants renyi iwae
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median_ms_each, parse_args, peak_memory_mib, write_results  # noqa: E402

VARIANTS = {"renyi": "RenyiELBO(alpha=0)", "iwae": "ImportanceWeightedELBO(iwae)",
            "dreg": "ImportanceWeightedELBO(dreg)", "trace": "Trace_ELBO"}
NO_PYRO = ("bench_pyro: Pyro is not installed here; it is an optional dependency of iwae_kernels "
           "(pip install pyro-ppl, or the [pyro] extra): nothing measured")


class VAE(nn.Module):
    """Pyro's VAE tutorial model and guide (examples/pyro_vae.py's); ``prefix`` names its modules in Pyro's global
    param store, so that each variant trains its own copy."""

    def __init__(self, z_dim=50, hidden=400, prefix=""):
        super().__init__()
        self.z_dim, self.prefix = z_dim, prefix
        self.encoder_hidden = nn.Sequential(nn.Linear(784, hidden), nn.Softplus())
        self.encoder_loc = nn.Linear(hidden, z_dim)
        self.encoder_logvar = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, 784))  # logits

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module(self.prefix + "decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        for name in ("encoder_hidden", "encoder_loc", "encoder_logvar"):
            pyro.module(self.prefix + name, getattr(self, name))
        h = self.encoder_hidden(x)
        loc, logvar = self.encoder_loc(h), self.encoder_logvar(h)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1))


def make_elbo(variant, k):
    import pyro

    from iwae_kernels.pyro import ImportanceWeightedELBO

    if variant == "renyi":
        return pyro.infer.RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    if variant == "trace":
        return pyro.infer.Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    return ImportanceWeightedELBO(num_particles=k, estimator=variant, max_plate_nesting=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, nargs="+", help="particles (default: 5 50 on a CPU, 50 500 on a GPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=[100])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="renyi, the baseline of speedup_vs_renyi, first (default: %(default)s)")
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                        help="Pyro's validation of distribution arguments and traces (default: on, Pyro's default)")
    args = parse_args(parser)
    try:
        import pyro
    except ModuleNotFoundError as error:
        if error.name != "pyro":
            raise
        print(NO_PYRO, flush=True)
        sys.exit(0)
    pyro.enable_validation(args.validation)
    device = torch.device(args.device)
    ks = args.k or ([50, 500] if device.type == "cuda" else [5, 50])
    env = {**environment(device), "pyro": pyro.__version__, "pyro_validation": args.validation}
    rows = []
    for batch in args.batch:
        for k in ks:
            torch.manual_seed(0)
            pyro.clear_param_store()
            x = torch.bernoulli(torch.full((batch, 784), 0.13)).to(device)
            base = VAE().to(device)
            vaes = {variant: copy.deepcopy(base) for variant in args.variants}
            starts = {}
            for variant, vae in vaes.items():
                vae.prefix = variant + "/"
                elbo = make_elbo(variant, k)
                with torch.no_grad():
                    starts[variant] = sum(elbo.loss(vae.model, vae.guide, x) for _ in range(20)) / 20 / batch
            bounds = [starts[v] for v in ("renyi", "iwae", "dreg") if v in starts]  # each -L_k per image
            assert max(bounds) - min(bounds) <= 0.02 * abs(bounds[0]) + 1.0, starts
            steps = {}
            for variant, vae in vaes.items():
                svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=make_elbo(variant, k))
                steps[variant] = (lambda svi: lambda: svi.step(x))(svi)
            baseline = None
            for variant, ms in median_ms_each(steps, device).items():
                baseline = ms if variant == "renyi" else baseline
                rows.append({"B": batch, "k": k, "variant": VARIANTS[variant], "step_ms": ms,
                             "samples_per_s": 1000 * batch / ms, "peak_mib": peak_memory_mib(steps[variant], device),
                             "speedup_vs_renyi": baseline / ms if baseline else None,
                             "loss_at_start": starts[variant]})
                print(rows[-1], flush=True)
    notes = ["a step: pyro.infer.SVI.step (the loss and its gradients through the ELBO's loss_and_grads, "
             "pyro.optim.Adam (lr 1e-3), the gradients zeroed); median over repeats after warm-up (on a CPU the "
             "variants of a shape take turns call by call: benchmarks/common.py median_ms_each)",
             "the model and guide: Pyro's VAE tutorial's (examples/pyro_vae.py), z_dim 50, hidden 400, 784 Bernoulli "
             "pixels, one batch of random binary images at density 0.13; each variant an SVI on its own copy of the "
             "same initial networks; max_plate_nesting=1 given to every ELBO",
             "RenyiELBO(alpha=0) and Trace_ELBO: num_particles=k, vectorize_particles=True; ImportanceWeightedELBO: "
             "num_particles=k (always vectorized), the bound folded by the library's backend for the device (torch "
             "on a CPU, the Triton kernels on a GPU)",
             "speedup_vs_renyi: RenyiELBO(alpha=0)'s step time over this row's, measured in the same run",
             "loss_at_start: the ELBO's loss per image at the initial weights, mean of 20 draws (-L_k for RenyiELBO "
             "and ImportanceWeightedELBO, checked to agree within 2% + 1 nat; -ELBO for Trace_ELBO)",
             f"Pyro {pyro.__version__}, validation {'on' if args.validation else 'off'} (pyro.enable_validation)",
             "peak_mib on a CPU: torch.profiler's memory accounting (common.peak_memory_mib)"]
    write_results("bench_pyro", device, env, rows,
                  ["B", "k", "variant", "step_ms", "samples_per_s", "peak_mib", "speedup_vs_renyi", "loss_at_start"],
                  notes)


if __name__ == "__main__":
    main()
