"""What the MNIST examples share: their command line and their slice of the data."""

import argparse
from pathlib import Path

from iwae_kernels.app import data


def mnist_example_parser(doc, epochs, test_images):
    """--images, --epochs, --k, --test-images and --out, with the script's docstring as its help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="training images (the first N of 60000)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--k", type=int, default=5, help="importance samples in training")
    parser.add_argument("--test-images", type=int, default=test_images)
    parser.add_argument("--out", type=Path, default=Path("runs/examples"))
    return parser


def mnist_subset(images, test_images):
    """The first ``images`` training images [N, 784] in [0, 1) and the first ``test_images`` test images, binarized
    once with a fixed seed (the test set every model here is scored on)."""
    train, test = data.load_mnist()
    return train[:images], data.fixed_binarization(test[:test_images])
