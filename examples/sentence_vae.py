"""A sentence VAE with word dropout and KL annealing (Bowman et al. 2016), trained with the IWAE bound.

Corpus: the sentences of the licence texts in Debian's base-files package (/usr/share/common-licenses, on every
Debian/Ubuntu machine); 90% train, 10% held out. The decoder's log-likelihood is categorical_log_likelihood, the
fused log-softmax + gather. Prints held-out L_k, reconstructions, samples from the prior and a latent-space
interpolation between two held-out sentences, and writes them to sentence_vae.png / sentence_vae.txt.

    python examples/sentence_vae.py [--epochs 40] [--k 5] [--word-dropout 0.5] [--out runs/examples]   # about a minute
"""

import argparse
import time
from pathlib import Path

import torch

import iwae_kernels as ik
from iwae_kernels.app.plots import pyplot, save_figure
from iwae_kernels.app.data import license_sentences
from iwae_kernels.models.sentence_vae import SentenceVAE, Vocabulary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--word-dropout", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=600, help="KL-annealing steps")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"))
    args = parser.parse_args()
    torch.manual_seed(0)
    sentences = license_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
    held_out = [sentences[i] for i in order[: len(sentences) // 10]]
    train = [sentences[i] for i in order[len(sentences) // 10:]]
    vocab = Vocabulary(train)
    length = 26
    train_ids, held_ids = vocab.encode(train, length), vocab.encode(held_out, length)
    print(f"{len(train)} training and {len(held_out)} held-out sentences, {len(vocab)} words")
    model = SentenceVAE(len(vocab), word_dropout=args.word_dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    step, start = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        for batch in train_ids[torch.randperm(len(train_ids))].split(32):
            loss = model.loss(batch, k=args.k, beta=ik.kl_warmup(step, args.warmup))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            step += 1
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            model.eval()
            held = -model.log_likelihood(held_ids, k=100, chunk=100).mean().item()
            print(f"epoch {epoch + 1}: held-out -L_100 {held:.1f} nats/sentence ({time.time() - start:.0f} s)")
    model.eval()
    lines = ["reconstructions (held out -> greedy decode of the posterior mean):"]
    mu, _ = model.encode(held_ids[:3])
    for source, decoded in zip(held_out[:3], model.decode(mu)):
        lines += [f"  {' '.join(source)}", f"  -> {vocab.decode(decoded.tolist())}"]
    lines.append("samples from the prior:")
    lines += [f"  {vocab.decode(ids.tolist())}" for ids in model.decode(torch.randn(3, model.latent))]
    lines.append("interpolation between two held-out sentences:")
    lines += [f"  {vocab.decode(ids.tolist())}" for ids in model.interpolate(held_ids[3], held_ids[4], steps=5)]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sentence_vae.txt").write_text("\n".join(lines) + "\n")
    plot(lines, args.out / "sentence_vae.png")


def plot(lines, path):
    plt = pyplot()

    figure = plt.figure(figsize=(11, 0.22 * len(lines) + 0.3))
    figure.text(0.01, 0.98, "\n".join(lines), va="top", family="monospace", fontsize=8)
    save_figure(figure, path)


if __name__ == "__main__":
    main()
