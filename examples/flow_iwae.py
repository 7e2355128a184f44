"""Normalizing-flow posteriors (planar / radial) on the fused sampling kernel.

1. Fit Rezende & Mohamed's two-moon-ring energy U(z) in 2D with a flow posterior: log w = -U(z_K) - log q0(z0)
   + sum log|det J|, where gaussian_sample(..., include_prior=False) gives z0 and -log q0(z0) in one pass.
   Fitted twice, with the ELBO (k = 1) and the IWAE bound (k = 8); writes the target beside both posteriors
   (flow_density.png): the ELBO's q seeks one mode, the IWAE bound's q covers both.
2. Train a flow IWAE and a plain one (no flow) on an MNIST subset and compare their test L_k.

    python examples/flow_iwae.py [--flow planar] [--length 16] [--out runs/examples]   # under a minute on a CPU
"""

import time

import torch

import iwae_kernels as ik
from iwae_kernels.app import data
from iwae_kernels.app.plots import pyplot, save_figure
from iwae_kernels.models.flows import FlowIWAE, flow_latent, make_flow

from common import mnist_example_parser, mnist_subset


def ring_energy(z):
    """U(z) of Rezende & Mohamed (2015), Table 1 row 1: a ring split in two; exp(-U) is the target density."""
    radius = (z.norm(dim=-1) - 2) / 0.4
    lobes = torch.logaddexp(-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2)
    return 0.5 * radius**2 - lobes


def fit_density(kind, length, steps, k):
    """A flow posterior fitted to exp(-U) with the k-sample bound; returns 20,000 of its samples [20000, 2]."""
    torch.manual_seed(0)
    flow = make_flow(kind, 2, length)
    mu, logvar = torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2, requires_grad=True)
    optimizer = torch.optim.Adam([mu, logvar, *flow.parameters()], lr=1e-2)
    for step in range(steps):
        # 256 samples a step in groups of k: the k-sample bound on log Z of exp(-U).
        z, latent = flow_latent(mu.expand(256 // k, 2), logvar.expand(256 // k, 2), k, flow)
        loss = -ik.iwae_bound(latent - ring_energy(z)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        samples, _ = flow_latent(mu, logvar, 20000, flow)
    print(f"2D density: {length} {kind} flows, k={k}, {steps} steps, final bound on log Z {-loss.item():.3f}")
    return samples.reshape(-1, 2)


def plot(panels, path):
    """The target density, then a 2D histogram per (title, samples) panel."""
    plt = pyplot()

    grid = torch.linspace(-4, 4, 200)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1)
    figure, axes = plt.subplots(1, 1 + len(panels), figsize=(4 * (1 + len(panels)), 4))
    axes[0].imshow(torch.exp(-ring_energy(zz)), origin="lower", extent=(-4, 4, -4, 4), cmap="viridis")
    axes[0].set_title("target exp(-U(z))")
    for axis, (title, samples) in zip(axes[1:], panels):
        axis.hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=100, range=[[-4, 4], [-4, 4]], cmap="viridis")
        axis.set_title(title, fontsize=9)
    for axis in axes:
        axis.set_aspect("equal")
    save_figure(figure, path)


def train_mnist(kind, length, images, epochs, test_images, k):
    train, test = mnist_subset(images, test_images)
    results = {}
    for name, flow_length in (("no flow", 0), (f"{length} {kind}", length)):
        torch.manual_seed(0)
        model = FlowIWAE(hidden=200, latent=20, flow=kind, length=flow_length)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = time.time()
        for _ in range(epochs):
            for batch in data.dynamic_binarize(train[torch.randperm(images)]).split(100):
                optimizer.zero_grad()
                model.loss(batch, k=k).backward()
                optimizer.step()
        nll = -model.log_likelihood(test, k=1000, chunk=250).mean().item()
        results[name] = nll
        print(f"MNIST {images} images x {epochs} epochs, k={k}, posterior {name}: test -L_1000 = {nll:.2f} nats "
              f"({time.time() - start:.0f} s)")
    return results


def main():
    parser = mnist_example_parser(__doc__, epochs=3, test_images=500)
    parser.add_argument("--flow", default="planar", choices=["planar", "radial"])
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--density-steps", type=int, default=2000)
    args = parser.parse_args()
    panels = [(f"q ({args.length} {args.flow} flows), k={k}: {name}",
               fit_density(args.flow, args.length, args.density_steps, k)) for k, name in ((1, "ELBO"), (8, "IWAE"))]
    plot(panels, args.out / "flow_density.png")
    train_mnist(args.flow, args.length, args.images, args.epochs, args.test_images, args.k)


if __name__ == "__main__":
    main()
