"""Inception FID, offline, from a local TorchScript Inception network.

The expected network is clean-fid's and StyleGAN2-ADA's `inception-2015-12-05.pt`: called as
`net(x, return_features=True)` on float (N, 3, 299, 299) images in [0, 255], it returns (N, 2048) pool
features. Images are first quantised to 8 bits, as if saved as PNGs, then resized to 299 px channel by
channel with PIL's bicubic filter on float32 planes, clipped to [0, 255]: clean-fid's "clean" resize, which
avoids the aliasing of tensor-library resizes. The file is loaded with torch.jit.load, so none of it runs as
Python.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raybilevel.errors import ConfigError, UserError
from raybilevel.metrics import frechet_distance
from raybilevel.worlds.datasets import first_line, to_uint8

WEIGHTS_FIELD = "world.metrics.fid_weights"
WEIGHTS_FILE = "inception-2015-12-05.pt"
WEIGHTS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_SIZE = 299


def resize_clean(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 (N, 3, H, W) to float32 (N, 3, size, size) in [0, 255]: per channel, PIL bicubic on a float plane."""
    planes = images.numpy().astype(np.float32)
    resized = [[np.asarray(Image.fromarray(plane).resize((size, size), Image.Resampling.BICUBIC))
                for plane in image] for image in planes]
    return torch.from_numpy(np.clip(np.array(resized, dtype=np.float32), 0, 255))


class InceptionFeatures:
    """Inception pool features of images in [-1, 1], computed `batch_size` images at a time."""

    def __init__(self, weights: str, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        fix = f"download {WEIGHTS_FILE} from {WEIGHTS_URL} on a machine with network and give its path"
        if not Path(weights).is_file():
            raise ConfigError(WEIGHTS_FIELD, f"no Inception weights at {weights!r}; {fix}")
        try:
            self.net = torch.jit.load(weights, map_location=device).eval()
        except (RuntimeError, ValueError) as error:
            raise ConfigError(WEIGHTS_FIELD, f"cannot load {weights!r} as TorchScript ({first_line(error)}); "
                                             f"{fix}") from None
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] to (N, D) float64 features on the CPU."""
        out = []
        for chunk in images.split(self.batch_size):  # resized chunks are 1 MB an image: never hold them all
            pixels = resize_clean(to_uint8(chunk)).to(self.device)
            out.append(self.net(pixels, return_features=True).double().cpu())
        return torch.cat(out)


def frechet_inception_distance(generated: torch.Tensor, reference: torch.Tensor,
                               features: InceptionFeatures) -> float:
    """FID between two image sets in [-1, 1] (rows are images); each set needs 2 or more for a covariance."""
    if min(len(generated), len(reference)) < 2:
        raise UserError(f"FID needs at least 2 generated and 2 reference images, got {len(generated)} and "
                        f"{len(reference)}; raise eval.n_samples")
    return frechet_distance(features(generated), features(reference))
