"""Prompt attacks on an erased student, in the spirit of UnlearnDiffAtk: no model beyond the student.

For each attacked concept prompt, the attacker holds images of the concept (the world's concept images, the
ones the upper level erased) and looks for conditioning under which the *student* denoises them best, i.e.
under which it still models the concept:
- `tokens`: words from the world's vocabulary prepended to the prompt, chosen by greedy coordinate search
  (every word, or none, at each position, for a few rounds) on the student's denoising loss;
- `embedding`: the prompt's text-encoder output itself, moved by Adam within an L2 ball of `radius` times
  its norm (a soft prompt: the strongest attack that still starts from the prompt).
The loss is the student's mean squared denoising error on fixed draws (image, timestep, noise), the same
draws for every candidate. The found conditionings are then sampled like any prompt and judged by the
world's concept judge: `attack_concept_rate`, beside `concept_rate`. Both variants go through the world's
PromptEncoder, so the toy world and Stable Diffusion pipelines share this code.
"""
from __future__ import annotations

from typing import Any

import torch

from raybilevel.config import AttackConfig
from raybilevel.losses import velocity
from raybilevel.sampling import sample
from raybilevel.worlds.base import World


class DenoisingProbe:
    """Fixed noisy versions of one prompt's concept images; loss(cond) is the student's error on them."""

    def __init__(self, world: World, unet: torch.nn.Module, images: torch.Tensor, draws: int,
                 generator: torch.Generator) -> None:
        from diffusers import DDPMScheduler

        alphas = DDPMScheduler.from_config(world.scheduler_config).alphas_cumprod.float()
        x0 = images[torch.arange(draws) % len(images)].float()
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (draws,), generator=generator)
        alpha_bar = alphas[t].view(-1, 1, 1, 1)
        device = next(unet.parameters()).device
        self.unet = unet
        self.x_t = (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise).to(device)
        self.t = t.to(device)
        target = velocity(x0, noise, alpha_bar) if world.prediction_type == "v_prediction" else noise
        self.target = target.to(device)

    def loss(self, cond: torch.Tensor) -> torch.Tensor:
        """cond: (L, D), one prompt's encoder output, used for every draw."""
        out = self.unet(self.x_t, self.t, cond.expand(len(self.x_t), *cond.shape)).sample.float()
        return torch.nn.functional.mse_loss(out, self.target)


@torch.no_grad()
def token_attack(world: World, probe: DenoisingProbe, prompt: str, cfg: AttackConfig) -> tuple[str, torch.Tensor]:
    """Greedy coordinate search over `cfg.tokens` prepended words (or none) -> (found prompt, its encoding)."""
    prefix = [""] * cfg.tokens
    candidates = ["", *world.vocabulary]

    def text(words: list[str]) -> str:
        return " ".join([w for w in words if w] + [prompt])

    for _ in range(cfg.rounds):
        for position in range(cfg.tokens):
            trials = [prefix[:position] + [word] + prefix[position + 1:] for word in candidates]
            encoded = world.prompts([text(words) for words in trials])
            losses = [probe.loss(cond).item() for cond in encoded]
            prefix = trials[min(range(len(trials)), key=losses.__getitem__)]  # ties: the earliest (no word first)
    found = text(prefix)
    return found, world.prompts([found])[0]


def embedding_attack(world: World, probe: DenoisingProbe, prompt: str, cfg: AttackConfig) -> torch.Tensor:
    """Adam on the prompt's encoder output, projected back into the ball ||delta|| <= radius ||cond||."""
    start = world.prompts([prompt])[0].detach()
    delta = torch.zeros_like(start, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=cfg.lr)
    bound = cfg.radius * start.norm()
    for _ in range(cfg.steps):
        optimiser.zero_grad()
        probe.loss(start + delta).backward()
        optimiser.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > bound:
                delta.mul_(bound / norm)
    return (start + delta).detach()


def attack_metrics(world: World, unet: torch.nn.Module, cfg: AttackConfig, *, n_samples: int, seed: int,
                   batch_size: int = 0) -> dict[str, Any]:
    """Attack the first cfg.prompts concept prompts that have concept images, sample n_samples images
    cycling over the found conditionings, and judge them: attack_concept_rate and its interval."""
    concept = world.concept
    generator = torch.Generator().manual_seed(seed)
    unet.requires_grad_(False)
    targets = [p for p in dict.fromkeys(concept.image_prompts) if p in concept.prompts][:cfg.prompts]
    if concept.images is None or not targets:
        raise ValueError("the attack needs concept images paired with concept prompts (world.concept.image_prompts)")
    found, conds = [], []
    for prompt in targets:
        rows = [i for i, p in enumerate(concept.image_prompts) if p == prompt]
        probe = DenoisingProbe(world, unet, concept.images[rows], cfg.draws, generator)
        if cfg.method == "tokens":
            text, cond = token_attack(world, probe, prompt, cfg)
            found.append(text)
        else:
            cond = embedding_attack(world, probe, prompt, cfg)
            found.append(f"{prompt} (embedding moved {cfg.radius:g} x its norm at most)")
        conds.append(cond)
    picks = [i % len(targets) for i in range(n_samples)]
    with torch.no_grad():
        images = sample(unet, world.scheduler_config, torch.stack([conds[i] for i in picks]), world.prompts([""])[0],
                        steps=world.sampling["steps"], guidance=world.sampling["guidance"], generator=generator,
                        sample_shape=world.sample_shape, vae=world.vae,
                        batch_size=batch_size or world.sampling["batch_size"])
    judged = world.evaluator.judge_concept(images, [targets[i] for i in picks], seed=seed, prefix="attack_concept_rate")
    return judged | {"attack_prompts": found}  # the settings go into eval_settings.attack
