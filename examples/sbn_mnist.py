"""A sigmoid belief network (binary latents) on MNIST, trained with the fixed-sample estimators.

Binary latents have no reparameterization path, so the IWAE bound is trained with VIMCO (score-function gradient
with leave-one-out baselines), reweighted wake-sleep (wake-phi) or the Renyi bound in VIMCO's form. Each estimator
trains the same model from the same seed; each is scored by its test -L_1000, streamed in chunks by the library's
evaluation. Writes sbn_samples.png (model samples of the last estimator).

    python examples/sbn_mnist.py [--estimators vimco rws renyi] [--latent 200 200] [--out runs/examples]
"""

import time

import torch

from iwae_kernels.app import data
from iwae_kernels.app.plots import pyplot, save_figure
from iwae_kernels.models import SigmoidBeliefNetwork
from iwae_kernels.models.sbn import SBN_ESTIMATORS

from common import mnist_example_parser, mnist_subset


def train_and_score(estimator, latent, train, test, args):
    """Train one SBN with ``estimator``; returns (model, test -L_1000)."""
    torch.manual_seed(0)
    model = SigmoidBeliefNetwork(latent=latent)
    with torch.no_grad():  # the decoder's bias at the data's log-odds: the usual start for binary models
        mean = train.mean(0).clamp(1e-3, 1 - 1e-3)
        model.decoder.bias.copy_(torch.log(mean) - torch.log1p(-mean))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    options = {"renyi_alpha": args.renyi_alpha} if estimator == "renyi" else {}
    start = time.time()
    for epoch in range(args.epochs):
        total = 0.0
        batches = data.dynamic_binarize(train[torch.randperm(train.shape[0])]).split(args.batch_size)
        for batch in batches:
            optimizer.zero_grad()
            loss = model.loss(batch, args.k, estimator, **options)
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"{estimator}: epoch {epoch + 1}: training loss {total / len(batches):.2f}", flush=True)
    nll = -model.log_likelihood(test, k=1000).mean().item()
    print(f"{estimator}: SBN {'-'.join(map(str, latent))}, {train.shape[0]} images x {args.epochs} epochs, "
          f"k={args.k}: test -L_1000 = {nll:.2f} nats ({time.time() - start:.0f} s)", flush=True)
    return model, nll


def main():
    parser = mnist_example_parser(__doc__, epochs=3, test_images=500)
    parser.add_argument("--estimators", nargs="+", default=["vimco", "rws"], choices=SBN_ESTIMATORS)
    parser.add_argument("--latent", nargs="+", type=int, default=[200], help="binary units per layer, bottom first")
    parser.add_argument("--renyi-alpha", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if not 1 <= len(args.latent) <= 3:
        parser.error("--latent: one to three layer sizes")
    train, test = mnist_subset(args.images, args.test_images)
    for estimator in args.estimators:
        model, _ = train_and_score(estimator, tuple(args.latent), train, test, args)
    plt = pyplot()
    figure, axes = plt.subplots(4, 8, figsize=(8, 4))
    for axis, image in zip(axes.flat, model.sample(32)):
        axis.imshow(image.reshape(28, 28), cmap="gray")
        axis.axis("off")
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(figure, args.out / "sbn_samples.png")


if __name__ == "__main__":
    main()
