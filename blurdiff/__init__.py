"""Blur diffusion (Lee et al., 2022): the process, the ADM UNet, data, training, sampling, FID."""

from blurdiff.diffusion import BlurDiffusion, ProcessConfig
from blurdiff.unet import build_unet

__all__ = ["BlurDiffusion", "ProcessConfig", "build_unet"]
