"""Pictures for reports and examples: matplotlib on the Agg backend (the app extra installs it)."""

from pathlib import Path

import torch


def _grid(images, rows, cols, *, side=28):
    images = images[: rows * cols].reshape(rows, cols, side, side)
    return images.permute(0, 2, 1, 3).reshape(rows * side, cols * side)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi=100):
    """Lay the figure out, write it to ``path`` (making its folder), close it and say where it went."""
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    print(f"wrote {path}")


def draw_pictures(model, test_bits, out_dir, *, history=None, step_log=None, test_nll=None, k=None):
    """samples.png (model samples), reconstructions.png (data above, reconstruction below), and curves.png:
    the training loss per logged step (step_log; else per epoch from history) and the test -L_k when given."""
    plt = pyplot()

    device = next(model.parameters()).device
    side = int(round(model.x_dim**0.5))
    if side * side == model.x_dim:
        torch.manual_seed(0)
        samples = _grid(model.sample(100).cpu(), 10, 10, side=side)
        plt.imsave(Path(out_dir) / "samples.png", samples.numpy(), cmap="gray")
        originals = test_bits[:10]
        pairs = torch.cat([originals, model.reconstruct(originals.to(device)).cpu()])
        plt.imsave(Path(out_dir) / "reconstructions.png", _grid(pairs, 2, originals.shape[0], side=side).numpy(),
                   cmap="gray")  # up to 10 columns: a --test-subset may hold fewer images
    if step_log or history:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        if step_log:
            axis.plot([row["step"] for row in step_log], [row["train_loss"] for row in step_log], marker=".",
                      label="training loss")
            axis.set_xlabel("step")
        else:
            axis.plot([row["epoch"] for row in history], [row["train_loss"] for row in history], marker="o",
                      label="training loss")
            axis.set_xlabel("epoch")
        if test_nll is not None:
            axis.axhline(test_nll, color="C1", linestyle="--", label=f"test -L_{k}")
        axis.set_ylabel("loss (-L_k, nats)")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(Path(out_dir) / "curves.png", dpi=120)
        plt.close(figure)
