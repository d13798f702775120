"""Blur diffusion (Lee et al., 2022): the process, the ADM UNet, data, training, sampling, FID."""

from blurdiff.diffusion import BlurDiffusion

__all__ = ["BlurDiffusion", "build_unet"]


def __getattr__(name):
    # The UNet pulls in more of torch.nn than the process needs; import it on first use.
    if name == "build_unet":
        from blurdiff.unet import build_unet

        return build_unet
    raise AttributeError(f"module 'blurdiff' has no attribute {name!r}")
