"""The model zoo: the paper's models and the others the project covers, each built on the public functional API.

    paper.py         PaperModel / paper_model (1 or 2 stochastic layers)
    conv.py          ConvIWAE (conv encoder, up-convolution decoder, through iwae_loss)
    flows.py         planar / radial flow posteriors, FlowIWAE
    draw.py          DRAW with and without Gaussian attention
    sentence_vae.py  a GRU sentence VAE with word dropout on categorical_log_likelihood
    sbn.py           SigmoidBeliefNetwork (binary latents: vimco, rws, renyi)
    layers.py        LocalReparamLinear (variational dropout)
    base.py          LogWeightModel, active_units and the shared MLP pieces
"""

from .base import LogWeightModel, active_units
from .conv import ConvIWAE
from .paper import PAPER_SIZES, PaperModel, paper_model
from .sbn import SigmoidBeliefNetwork

__all__ = ["ConvIWAE", "LogWeightModel", "PAPER_SIZES", "PaperModel", "active_units", "paper_model",
           "SigmoidBeliefNetwork"]
