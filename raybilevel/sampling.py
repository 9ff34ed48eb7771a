"""DDIM sampling with classifier-free guidance, for pixel-space (toy) and latent (SD) worlds."""
from __future__ import annotations

import torch
from tqdm import tqdm


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VAE latents (as the UNet sees them, times scaling_factor) to images in [-1, 1] on the CPU."""
    parameter = next(vae.parameters())
    images = [vae.decode(chunk.to(parameter.device, parameter.dtype) / vae.config.scaling_factor).sample
              for chunk in latents.split(batch_size)]
    return torch.cat(images).float().clamp(-1, 1).cpu()


@torch.no_grad()
def sample(unet, scheduler_config: dict, prompt_embeds: torch.Tensor, empty_embed: torch.Tensor, *,
           steps: int, guidance: float, generator: torch.Generator, sample_shape: tuple[int, int, int],
           vae=None, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1], shape (N, 3, H, W), one per row of `prompt_embeds`.

    `sample_shape` is the (C, H, W) the UNet denoises (latent shape when a VAE is given). Noise is drawn
    from `generator` on the CPU so that results do not depend on the device.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    was_training = unet.training
    unet.eval()
    out = []
    starts = range(0, prompt_embeds.shape[0], batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", leave=False, disable=len(starts) < 2):
        cond = prompt_embeds[start:start + batch_size].to(device, dtype)
        n = cond.shape[0]
        uncond = empty_embed.to(device, dtype).expand(n, -1, -1)
        x = torch.randn((n, *sample_shape), generator=generator).to(device, dtype) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps_uncond, eps_cond = unet(model_in, t, torch.cat([uncond, cond])).sample.chunk(2)
            guided = eps_uncond + guidance * (eps_cond - eps_uncond)
            x = scheduler.step(guided, t, x).prev_sample
        if vae is not None:
            x = decode_latents(vae, x, batch_size=len(x))
        out.append(x.float().clamp(-1, 1).cpu())
    unet.train(was_training)
    return torch.cat(out)
