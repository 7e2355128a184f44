"""The sentence VAE: log-weights against torch.distributions, the corpus, training, decoding, interpolation."""


import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.app.data import LICENSES, license_sentences
from iwae_kernels.models.sentence_vae import BOS, EOS, PAD, SentenceVAE, Vocabulary

from helpers import backend_device
from helpers import assert_log_weights_match, train_and_check_loss_drops
from naive import naive_categorical, naive_latent

SENTENCES = [["a", "b", "c"], ["b", "c", "a", "a"], ["c", "c"], ["a", "b", "b", "c", "a"]]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_log_weights_match_naive(backend):
    """Eval mode (no word dropout): log Cat(s | decoder(z)) + log N(z; 0, I) - log q(z|s), float64."""
    device = backend_device(backend)
    torch.manual_seed(0)
    vocab = Vocabulary(SENTENCES)
    tokens = vocab.encode(SENTENCES, 7)
    model = SentenceVAE(len(vocab), embed=5, hidden=6, latent=3, backend=backend).double().eval()
    eps = torch.randn(4, len(SENTENCES), 3, dtype=torch.float64)
    mu, logvar = model.encode(tokens)
    z, latent = naive_latent(mu, logvar, eps)
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], 1)
    logits = model.decoder_logits(z.reshape(-1, 3), inputs.repeat(4, 1)).reshape(4, len(SENTENCES), 7, -1)
    expected = naive_categorical(logits, tokens, tokens != PAD) + latent
    assert_log_weights_match(model, tokens, 4, eps, expected, backend, device)


def test_trains_decodes_and_interpolates():
    torch.manual_seed(1)
    vocab = Vocabulary(SENTENCES)
    tokens = vocab.encode(SENTENCES, 7)
    model = SentenceVAE(len(vocab), embed=8, hidden=16, latent=2, word_dropout=0.2, backend="torch")
    train_and_check_loss_drops(model, tokens, k=3, steps=150, drop=2.0, beta=lambda step: ik.kl_warmup(step, 50))
    assert model.decode(torch.zeros(2, 2), max_len=6).shape == (2, 6)
    path = model.interpolate(tokens[0], tokens[1], steps=4, max_len=6)
    assert path.shape == (4, 6)
    assert vocab.decode(vocab.encode([["a", "b"]], 4)[0].tolist()) == "a b"
    assert vocab.encode([["zzz"]], 3)[0].tolist() == [3, EOS, PAD]  # unknown word -> <unk>


@pytest.mark.skipif(not LICENSES.is_dir(), reason="needs Debian's base-files licence texts")
def test_license_corpus():
    sentences = license_sentences()
    assert len(sentences) > 500 and all(4 <= len(s) <= 25 for s in sentences)
    assert "the precise terms and conditions for copying distribution and modification follow".split() in sentences
