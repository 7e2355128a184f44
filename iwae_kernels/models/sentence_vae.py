"""A sentence VAE with word dropout (Bowman et al. 2016) trained with the IWAE bound on the fused kernels.

GRU encoder -> q(z|s) = N(mu, diag exp(logvar)); GRU decoder started from z, fed the previous word (replaced by
<unk> with probability ``word_dropout`` in training, so the decoder must lean on z). log p(s|z) is
``categorical_log_likelihood`` over the [k, B, T, V] logits, so the log-probabilities are never stored.

The example's corpus (the licence texts Debian ships) is loaded by ``iwae_kernels.app.data.license_sentences``.
"""

import collections

import torch
from torch import nn

from .. import functional
from .base import LogWeightModel

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class Vocabulary:
    """Word <-> id for the ``size`` most frequent words (ids 0-3: <pad>, <bos>, <eos>, <unk>)."""

    def __init__(self, sentences, size=1000):
        counts = collections.Counter(word for sentence in sentences for word in sentence)
        self.words = SPECIALS + [word for word, _ in counts.most_common(size - len(SPECIALS))]
        self.ids = {word: i for i, word in enumerate(self.words)}

    def __len__(self):
        return len(self.words)

    def encode(self, sentences, length):
        """[N, length] int64 ids, each sentence followed by <eos> and padded; longer ones are cut."""
        out = torch.full((len(sentences), length), PAD, dtype=torch.int64)
        for row, sentence in enumerate(sentences):
            ids = [self.ids.get(word, UNK) for word in sentence][: length - 1] + [EOS]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids):
        """Words up to the first <eos>."""
        words = []
        for i in ids:
            if i == EOS:
                break
            words.append(self.words[i])
        return " ".join(words)


class SentenceVAE(LogWeightModel):
    """tokens [B, T] (<eos>-terminated, <pad>-padded) -> loss(tokens, k, beta=) / log_weights / log_likelihood;
    decode / interpolate from z."""

    def __init__(self, vocab_size, embed=64, hidden=128, latent=16, word_dropout=0.3, backend=None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.encoder = nn.GRU(embed, hidden, batch_first=True)
        self.posterior = nn.Linear(hidden, 2 * latent)
        self.initial = nn.Linear(latent, hidden)
        self.decoder = nn.GRU(embed, hidden, batch_first=True)
        self.output = nn.Linear(hidden, vocab_size)
        self.word_dropout, self.latent, self.backend = word_dropout, latent, backend

    def encode(self, tokens):
        """(mu, logvar) [B, latent] from the GRU state after each sentence's <eos>."""
        states, _ = self.encoder(self.embedding(tokens))
        last = (tokens != PAD).sum(1) - 1
        return self.posterior(states[torch.arange(tokens.shape[0]), last]).chunk(2, -1)

    def decoder_logits(self, z, inputs):
        """z [N, latent], inputs [N, T] -> logits [N, T, V] (teacher forcing)."""
        states, _ = self.decoder(self.embedding(inputs), torch.tanh(self.initial(z)).unsqueeze(0))
        return self.output(states)

    def log_weights(self, tokens, k, eps=None, beta=None):
        """log p(s|z) + beta (log p(z) - log q(z|s)) [k, B]."""
        mu, logvar = self.encode(tokens)
        z, latent = functional.gaussian_sample(mu, logvar, k, eps=eps, latent_scale=beta, backend=self.backend)
        inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], 1)
        if self.training and self.word_dropout > 0:
            dropped = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
            inputs = torch.where(dropped & (inputs != PAD) & (inputs != BOS), UNK, inputs)
        batch, steps = tokens.shape
        logits = self.decoder_logits(z.reshape(k * batch, -1), inputs.repeat(k, 1)).reshape(k, batch, steps, -1)
        mask = (tokens != PAD).to(logits.dtype)
        return functional.categorical_log_likelihood(logits, tokens, mask, backend=self.backend) + latent

    @torch.no_grad()
    def decode(self, z, max_len=20):
        """Greedy decoding: ids [N, max_len] from z [N, latent]."""
        state = torch.tanh(self.initial(z)).unsqueeze(0)
        word = torch.full((z.shape[0], 1), BOS, dtype=torch.int64, device=z.device)
        out = []
        for _ in range(max_len):
            step, state = self.decoder(self.embedding(word), state)
            word = self.output(step).argmax(-1)
            out.append(word)
        return torch.cat(out, 1)

    @torch.no_grad()
    def interpolate(self, first, second, steps=5, max_len=20):
        """Greedy decodings along the line between two sentences' posterior means: ids [steps, max_len]."""
        mu, _ = self.encode(torch.stack([first, second]))
        weights = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)
        return self.decode((1 - weights) * mu[0] + weights * mu[1], max_len)
