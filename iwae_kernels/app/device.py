"""Which device a run uses, and the name reports and benchmark results give it."""

import platform

import torch


def device_name(device):
    """What reports and benchmark results call ``device``: the GPU's name, or the CPU's architecture and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def resolve_device(name):
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
