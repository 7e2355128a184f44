"""DRAW as an IWAE: per-step latent terms summed, against torch.distributions; attention; training, generation."""

import math

import pytest
import torch

from iwae_kernels.models.draw import DRAW, GaussianAttention

from helpers import backend_device
from helpers import assert_close, assert_log_weights_match, train_and_check_loss_drops
from naive import naive_bernoulli, naive_latent


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_log_weights_match_naive(backend):
    device = backend_device(backend)
    torch.manual_seed(0)
    model = DRAW(x_dim=6, hidden=5, latent=2, steps=3, backend=backend).double()
    x = torch.rand(4, 6, dtype=torch.float64).round()
    eps = torch.randn(3, 4, 3, 2, dtype=torch.float64)
    # The same recurrence written with torch.distributions, k * B rows sample-major.
    rows = x.repeat(3, 1)
    zeros = torch.zeros(12, 5, dtype=torch.float64)
    enc, dec, canvas, latent = (zeros, zeros), (zeros, zeros), torch.zeros(12, 6, dtype=torch.float64), 0
    for t in range(3):
        enc = model.encoder(torch.cat([rows, rows - torch.sigmoid(canvas), dec[0]], -1), enc)
        mu, logvar = model.posterior(enc[0]).chunk(2, -1)
        z, step_latent = naive_latent(mu, logvar, eps[:, :, t].reshape(12, 2))
        latent = latent + step_latent
        dec = model.decoder(z, dec)
        canvas = canvas + model.write(dec[0])
    expected = (naive_bernoulli(canvas, rows) + latent).reshape(3, 4)
    assert_log_weights_match(model, x, 3, eps, expected, backend, device)


def test_trains_and_generates():
    torch.manual_seed(1)
    model = DRAW(x_dim=8, hidden=16, latent=2, steps=3, backend="torch")
    x = (torch.rand(32, 8) < torch.linspace(0.1, 0.9, 8)).float()
    train_and_check_loss_drops(model, x, k=3, steps=60, drop=0.5)
    assert model.generate(5).shape == (3, 5, 8)
    assert torch.isfinite(model.log_likelihood(x[:2], k=20, chunk=8)).all()


def attention_params(rows, centre=(0.0, 0.0), log_var=-12.0, delta=1.0, gamma=1.0):
    """Raw (g_x, g_y, log sigma^2, log delta_hat, log gamma) rows, as the attention's linear map would give them."""
    row = torch.tensor([centre[0], centre[1], log_var, math.log(delta), math.log(gamma)], dtype=torch.float64)
    return row.expand(rows, 5)


def with_params(attention, params):
    """Make the attention's linear map output ``params`` whatever the state (weight 0, bias = params[0])."""
    with torch.no_grad():
        attention.params.weight.zero_()
        attention.params.bias.copy_(params[0])
    return attention


def test_attention_with_unit_stride_and_narrow_filters_reads_and_writes_the_image():
    height, width = 7, 5
    attention = with_params(GaussianAttention(3, height, width, patch=7).double(), attention_params(1, gamma=2.0))
    image = torch.rand(4, height * width, dtype=torch.float64)
    state = torch.randn(4, 3, dtype=torch.float64)
    patch = attention.read(image, state).reshape(4, 7, 7)
    # The 7 x 7 grid centred on a 7 x 5 image with stride 1: rows are the image rows, columns 1..5 are its columns
    # (columns 0 and 6 sit one pixel outside and see their nearest edge column).
    assert_close(patch[:, :, 1:6], 2.0 * image.reshape(4, height, width))
    assert_close(patch[:, :, 0], 2.0 * image.reshape(4, height, width)[:, :, 0])
    write_attention = with_params(GaussianAttention(3, height, height, patch=7).double(), attention_params(1, gamma=2.0))
    square = torch.rand(4, 49, dtype=torch.float64)
    assert_close(write_attention.write(square, state), square / 2.0)


def test_attention_with_stride_two_reads_the_two_by_two_means():
    attention = GaussianAttention(3, 8, 8, patch=4).double()
    # delta = (max(A, B) - 1) / (N - 1) * delta_hat = 2 puts filter i at pixel 2i - 0.5: between pixels 2i-1, 2i.
    with_params(attention, attention_params(1, delta=2.0 * 3 / 7))
    image = torch.rand(2, 64, dtype=torch.float64)
    patch = attention.read(image, torch.zeros(2, 3, dtype=torch.float64))
    assert_close(patch, torch.nn.functional.avg_pool2d(image.reshape(2, 1, 8, 8), 2).flatten(1))


def test_attention_grid_far_outside_the_image_stays_finite():
    attention = with_params(GaussianAttention(3, 6, 6, patch=3).double(), attention_params(1, centre=(40.0, -40.0)))
    image = torch.rand(2, 36, dtype=torch.float64, requires_grad=True)
    patch = attention.read(image, torch.zeros(2, 3, dtype=torch.float64))
    patch.sum().backward()
    assert torch.isfinite(patch).all() and torch.isfinite(image.grad).all()


def test_fresh_attention_covers_the_image():
    # Before training (weights zeroed to drop the state's random part) the grid spans the image with filters
    # half a stride wide: a writer turns a constant patch into a canvas of about that value in the middle (up to
    # 1.5x per axis at the border, where the edge filters renormalize over their half inside the image), and a reader's
    # patch of a constant image is that constant.
    writer = GaussianAttention(3, 28, 28, patch=5, writer=True).double()
    reader = GaussianAttention(3, 28, 28, patch=5).double()
    state = torch.zeros(2, 3, dtype=torch.float64)
    for attention in (writer, reader):
        with torch.no_grad():
            attention.params.weight.zero_()
    canvas = writer.write(torch.full((2, 25), 0.7, dtype=torch.float64), state).reshape(2, 28, 28)
    assert ((canvas[:, 9:19, 9:19] - 0.7).abs() < 0.07).all(), canvas[0, 14]
    assert (canvas < 0.7 * 1.6 ** 2).all() and (canvas > 0.7 * 0.95).all()
    assert_close(reader.read(torch.full((2, 784), 0.7, dtype=torch.float64), state), torch.full((2, 25), 0.7, dtype=torch.float64))


def test_draw_with_attention_trains_and_generates():
    torch.manual_seed(2)
    model = DRAW(x_dim=36, hidden=16, latent=3, steps=4, attention=(3, 4), image=(6, 6), backend="torch")
    x = torch.zeros(16, 6, 6)
    x[:, 1:5, 2:4] = 1.0
    x = x.flatten(1)
    train_and_check_loss_drops(model, x, k=3, steps=80, drop=2.0)
    assert model.generate(5).shape == (4, 5, 36)


def test_draw_attention_needs_an_image_of_x_dim_pixels():
    with pytest.raises(ValueError, match="image"):
        DRAW(x_dim=30, attention=(2, 2), image=(5, 5))
    with pytest.raises(ValueError, match="patch"):
        GaussianAttention(4, 5, 5, patch=1)
