"""A convolutional IWAE on MNIST through iwae_loss, optionally with KL annealing.

The encoder is two strided convolutions, the decoder two up-convolutions (iwae_kernels.models.ConvIWAE); the
loss is iwae_loss with flatten_samples=True, so the decoder sees the k * B samples as one image batch. With
--warmup N the latent term is weighted by beta = kl_warmup(step, N), rising from 0 to 1 (Bowman et al. 2016).
Writes model samples and test reconstructions to conv_samples.png.

    python examples/conv_iwae.py [--images 10000] [--epochs 2] [--k 5] [--warmup 200] [--out runs/examples]
"""

import time

import torch

import iwae_kernels as ik
from iwae_kernels.app import data
from iwae_kernels.app.plots import pyplot, save_figure
from iwae_kernels.models import ConvIWAE

from common import mnist_example_parser, mnist_subset


def main():
    parser = mnist_example_parser(__doc__, epochs=2, test_images=500)
    parser.add_argument("--warmup", type=int, default=0, help="KL-annealing steps (0: none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = mnist_subset(args.images, args.test_images)
    model = ConvIWAE(latent=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step, start = 0, time.time()
    for epoch in range(args.epochs):
        for batch in data.dynamic_binarize(train[torch.randperm(args.images)]).split(100):
            beta = ik.kl_warmup(step, args.warmup) if args.warmup else None
            loss = model.loss(batch, k=args.k, beta=beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        print(f"epoch {epoch + 1}: train -L_{args.k} (beta-weighted) {loss.item():.2f}, {time.time() - start:.0f} s")
    nll = -model.log_likelihood(test, k=1000, chunk=250).mean().item()
    print(f"test -L_1000 on {args.test_images} images: {nll:.2f} nats")
    plot(model, test[:8], args.out / "conv_samples.png")


def plot(model, images, path):
    plt = pyplot()

    with torch.no_grad():
        mu, _ = model.encoder(images).chunk(2, -1)
        rows = [images, torch.sigmoid(model.decoder(mu)), model.sample(8), model.sample(8)]
    figure, axes = plt.subplots(len(rows), 8, figsize=(8, len(rows)))
    for row, (title, pictures) in enumerate(zip(["test", "reconstruction", "samples", ""], rows)):
        for column, picture in enumerate(pictures):
            axes[row, column].imshow(picture.reshape(28, 28), cmap="gray")
            axes[row, column].axis("off")
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    save_figure(figure, path)


if __name__ == "__main__":
    main()
