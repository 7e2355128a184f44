"""DRAW (Gregor et al. 2015) trained as an IWAE on MNIST, on the fused sampling kernel.

T steps, each with its own Gaussian latent; the log-weight sums the per-step latent terms. Prints the test
L_k and draws the canvas after every step for samples from the prior (draw_canvases.png). ``--attention R,W``
reads R x R and writes W x W patches through Gaussian attention (draw_attention_canvases.png). On a 2-core CPU,
the defaults reach a test -L_200 of about 124 nats in 2 minutes; ``--attention 5,5 --steps 10`` about 137 in 2
minutes; the paper's MNIST setting ``--attention 2,5`` (with T = 64 and far longer training) learns slower here
(``--steps 16``: about 159 after 3 epochs).

    python examples/draw_mnist.py [--images 10000] [--epochs 3] [--steps 8] [--k 5] [--attention R,W] [--out runs/examples]
"""

import time

import torch

from iwae_kernels.app import data
from iwae_kernels.models.draw import DRAW
from iwae_kernels.app.plots import pyplot, save_figure

from common import mnist_example_parser, mnist_subset


def main():
    parser = mnist_example_parser(__doc__, epochs=3, test_images=200)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--attention", type=lambda text: tuple(int(n) for n in text.split(",")), default=None,
                        help="read,write patch sizes, e.g. 2,5 (default: no attention)")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = mnist_subset(args.images, args.test_images)
    model = DRAW(hidden=256, latent=10, steps=args.steps, attention=args.attention)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for epoch in range(args.epochs):
        for batch in data.dynamic_binarize(train[torch.randperm(args.images)]).split(100):
            loss = model.loss(batch, k=args.k)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        print(f"epoch {epoch + 1}: train -L_{args.k} {loss.item():.2f} ({time.time() - start:.0f} s)")
    nll = -model.log_likelihood(test, k=200, chunk=100).mean().item()
    print(f"test -L_200 on {args.test_images} images: {nll:.2f} nats")
    name = "draw_canvases.png" if args.attention is None else "draw_attention_canvases.png"
    plot(model.generate(8), args.out / name)


def plot(canvases, path):
    plt = pyplot()

    steps, samples = canvases.shape[:2]
    figure, axes = plt.subplots(samples, steps, figsize=(steps, samples))
    for row in range(samples):
        for step in range(steps):
            axes[row, step].imshow(canvases[step, row].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            axes[row, step].axis("off")
            if row == 0:
                axes[row, step].set_title(f"t={step + 1}", fontsize=8)
    save_figure(figure, path, dpi=80)


if __name__ == "__main__":
    main()
