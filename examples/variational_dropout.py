"""An IWAE whose decoder is Bayesian: LocalReparamLinear layers (variational dropout, Kingma et al. 2015).

The decoder's weights are factorized Gaussians; each of the k * B decoder rows gets its own weight noise through
the local reparameterization trick (one fused kernel on a GPU). The loss is iwae_loss plus the weights' KL to the
log-uniform prior over the training-set size. After training, weights with log alpha > 3 carry almost no
signal: the script reports that fraction, the test L_1000 with the mean weights, and plots the log alpha
histogram (vd_log_alpha.png).

    python examples/variational_dropout.py [--images 10000] [--epochs 3] [--k 5] [--out runs/examples]
"""

import time

import torch
from torch import nn

import iwae_kernels as ik
from iwae_kernels.app import data
from iwae_kernels.app.plots import pyplot, save_figure
from iwae_kernels.models.layers import LocalReparamLinear

from common import mnist_example_parser, mnist_subset


class BayesianDecoderIWAE(nn.Module):
    def __init__(self, hidden=200, latent=20):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(LocalReparamLinear(latent, hidden), nn.Tanh(), LocalReparamLinear(hidden, 784))

    def loss(self, x, k):
        mu, logvar = self.encoder(x).chunk(2, -1)
        return ik.iwae_loss(x, mu, logvar, self.decoder, k=k)

    def kl(self):
        return sum(layer.kl() for layer in self.decoder if isinstance(layer, LocalReparamLinear))


def main():
    args = mnist_example_parser(__doc__, epochs=3, test_images=500).parse_args()
    torch.manual_seed(0)
    train, test = mnist_subset(args.images, args.test_images)
    model = BayesianDecoderIWAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for epoch in range(args.epochs):
        for batch in data.dynamic_binarize(train[torch.randperm(args.images)]).split(100):
            loss = model.loss(batch, args.k) + model.kl() / args.images
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: -L_{args.k} + KL/N = {loss.item():.2f}, {time.time() - start:.0f} s")
    model.eval()  # mean weights
    with torch.no_grad():
        mu, logvar = model.encoder(test).chunk(2, -1)
        accumulator = ik.StreamingIWAEBound(test.shape[0], dtype=torch.float64)
        for _ in range(4):
            z, latent = ik.gaussian_sample(mu, logvar, 250)
            accumulator.update(ik.bernoulli_log_likelihood(model.decoder(z), test) + latent)
    log_alpha = torch.cat([layer.log_alpha().flatten() for layer in model.decoder if isinstance(layer, LocalReparamLinear)])
    print(f"test -L_1000 (mean weights) on {args.test_images} images: {-accumulator.bound().mean().item():.2f} nats")
    print(f"decoder weights with log alpha > 3 (prunable): {(log_alpha > 3).float().mean().item():.1%}")
    plot(log_alpha.detach(), args.out / "vd_log_alpha.png")


def plot(log_alpha, path):
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5, 3))
    axis.hist(log_alpha.numpy(), bins=80)
    axis.axvline(3, color="red", lw=0.8)
    axis.set_xlabel("log alpha = log sigma^2 / mu^2 (decoder weights)")
    axis.set_ylabel("weights")
    save_figure(figure, path)


if __name__ == "__main__":
    main()
