"""Pyro's VAE tutorial model trained as an IWAE: SVI with iwae_kernels.pyro.ImportanceWeightedELBO.

The model and guide are the tutorial's (https://pyro.ai/examples/vae.html: MLP encoder and decoder, softplus,
z_dim 50, hidden 400), on binarized MNIST. The loss is -sum over the batch of L_k per example under the chosen
estimator (dreg by default), folded by this library's estimator_bound. It prints -L_k per image each epoch and the
test -L_1000 of the trained networks (iwae_kernels.log_likelihood), and saves Pyro's param store.

    python examples/pyro_vae.py [--images 5000] [--epochs 2] [--k 5] [--estimator dreg] [--out runs/examples]
"""

import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import iwae_kernels as ik
from iwae_kernels.app import data
from iwae_kernels.pyro import PYRO_ESTIMATORS, ImportanceWeightedELBO

from common import mnist_example_parser, mnist_subset


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(784, hidden), nn.Softplus())
        self.loc = nn.Linear(hidden, z_dim)
        self.logvar = nn.Linear(hidden, z_dim)

    def forward(self, x):
        """x [B, 784] -> q(z|x)'s mean and log-variance, [B, z_dim] each."""
        h = self.hidden(x)
        return self.loc(h), self.logvar(h)


class VAE(nn.Module):
    def __init__(self, z_dim=50, hidden=400):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(z_dim, hidden)
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, 784))  # logits

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, logvar = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1))


def main():
    parser = mnist_example_parser(__doc__, epochs=2, test_images=500)
    parser.add_argument("--estimator", default="dreg", choices=PYRO_ESTIMATORS)
    parser.set_defaults(images=5000)  # two epochs in about two minutes on two CPU cores
    args = parser.parse_args()
    torch.manual_seed(0)
    pyro.clear_param_store()
    train, test = mnist_subset(args.images, args.test_images)
    vae = VAE()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                         loss=ImportanceWeightedELBO(num_particles=args.k, estimator=args.estimator,
                                                    max_plate_nesting=1))
    start = time.time()
    for epoch in range(args.epochs):
        total = sum(svi.step(batch) for batch in data.dynamic_binarize(train[torch.randperm(args.images)]).split(100))
        print(f"epoch {epoch + 1}: -L_{args.k} = {total / args.images:.2f} per image ({args.estimator}), "
              f"{time.time() - start:.0f} s")
    with torch.no_grad():
        loc, logvar = vae.encoder(test)
        log_px = ik.log_likelihood(test, loc, logvar, vae.decoder, k=1000)
    print(f"test -L_1000 = {-log_px.mean().item():.2f} nats on {args.test_images} images")
    args.out.mkdir(parents=True, exist_ok=True)
    pyro.get_param_store().save(args.out / "pyro_vae_params.pt")


if __name__ == "__main__":
    main()
