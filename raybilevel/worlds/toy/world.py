"""The embedded toy world as a `World`: shipped teacher + judge, procedural data, no downloads."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from raybilevel.config import WorldConfig
from raybilevel.errors import UserError
from raybilevel.sampling import sample
from raybilevel.text import PromptEncoder
from raybilevel.worlds.base import ConceptData, World, cache_dir, cache_key, cached_tensor, file_digest
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.judge import DEFAULT_BATCH, ToyEvaluator, load_judge

SHIPPED_ASSETS = Path(__file__).parent / "assets"


def assets_dir() -> Path:
    """The shipped teacher and judge, or a rebuilt set named by RAYBILEVEL_TOY_ASSETS."""
    return Path(os.environ.get("RAYBILEVEL_TOY_ASSETS", SHIPPED_ASSETS))


WEIGHTS = "diffusion_pytorch_model.safetensors"
DEFAULT_STEPS, DEFAULT_GUIDANCE = 25, 1.25  # chosen on a selection seed: benchmarks/teacher_sampler.py


@dataclass
class ToyFinetuneData:
    """The fine-tuning set: every attribute combination except the concept's, in random templates."""

    images: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def get_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        return self.images[indices], [self.captions[i] for i in indices]


TEXT_STACK_TEACHER = "teacher"  # the one folder with the whole stack; other teachers may ship only unet/


def load_teacher_stack(folder: Path, device: str | torch.device = "cpu"):
    """The UNet from `folder`; the text encoder, tokenizer and scheduler from `folder` where it has them,
    else from assets/teacher beside it (teacher_6000 ships only its UNet: the rest is byte-identical)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    if not (folder / "unet").is_dir():
        raise UserError(f"the toy teacher is missing at {folder}; rebuild it with `raybilevel toy build`")
    part = lambda name: folder / name if (folder / name).is_dir() else folder.parent / TEXT_STACK_TEACHER / name
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).to(device)
    unet.eval().requires_grad_(False)
    prompts = PromptEncoder(AutoTokenizer.from_pretrained(part("tokenizer")),
                            CLIPTextModel.from_pretrained(part("text_encoder"), use_safetensors=True).to(device))
    scheduler_config = dict(DDPMScheduler.from_pretrained(part("scheduler")).config)
    return unet, prompts, scheduler_config


def teacher_dir(cfg: WorldConfig) -> Path:
    """The folder of `world.toy_teacher` in the assets; a missing one is refused naming the shipped ones."""
    folder = assets_dir() / cfg.toy_teacher
    if not (folder / "unet").is_dir():
        shipped = sorted(p.name for p in assets_dir().glob("*") if (p / "unet").is_dir())
        raise UserError(f"world.toy_teacher: no teacher {cfg.toy_teacher!r} in {assets_dir()}; use one of {shipped}")
    return folder


def build_toy_world(cfg: WorldConfig, seed: int, device: str | torch.device = "cpu") -> World:
    try:
        data.attribute_of(cfg.concept)
    except ValueError as error:
        raise UserError(f"world.concept: {error}") from None
    assets, folder = assets_dir(), teacher_dir(cfg)
    teacher, prompts, scheduler_config = load_teacher_stack(folder, device)
    steps, guidance = cfg.sampling_steps or DEFAULT_STEPS, cfg.guidance or DEFAULT_GUIDANCE
    samples = data.generate(cfg.toy_images, seed=seed + 101, exclude=cfg.concept)
    concept_items = data.items_with(cfg.concept)
    concept_prompts = [data.caption(item) for item in concept_items]
    anchor_prompts = [data.caption(data.anchor_item(item, cfg.concept)) for item in concept_items]
    image_prompts = [concept_prompts[i % len(concept_prompts)] for i in range(cfg.n_concept_images)]
    # The upper level sees teacher samples of the concept, never the world's real concept images; every
    # trial of a sweep draws the same ones, so they are drawn once per teacher and settings.
    began = time.perf_counter()
    key = cache_key([file_digest(folder / "unet" / WEIGHTS), image_prompts, steps, guidance, seed + 202])
    images = cached_tensor(cache_dir() / "toy_concept_images" / f"{key}.safetensors", lambda: sample(
        teacher, scheduler_config, prompts(image_prompts), prompts([""])[0], steps=steps, guidance=guidance,
        generator=torch.Generator().manual_seed(seed + 202), sample_shape=(3, data.RESOLUTION, data.RESOLUTION)))
    concept_seconds = time.perf_counter() - began
    concept = ConceptData(
        name=cfg.concept, prompts=concept_prompts, anchor_prompts=anchor_prompts, images=images,
        image_prompts=image_prompts,
        preservation_prompts=[data.caption(item) for item in data.items_without(cfg.concept)],
    )
    evaluator = ToyEvaluator(load_judge(assets / "judge.safetensors"), prompts, scheduler_config,
                             cfg.concept, steps, guidance)
    return World(
        name="toy", teacher=teacher, prompts=prompts, scheduler_config=scheduler_config,
        sample_shape=(3, data.RESOLUTION, data.RESOLUTION),
        finetune=ToyFinetuneData(torch.from_numpy(samples.images), samples.captions), concept=concept,
        evaluator=evaluator, sampling={"steps": steps, "guidance": guidance, "batch_size": DEFAULT_BATCH},
        info={"world": "toy", "concept": cfg.concept, "assets": str(assets), "teacher": cfg.toy_teacher},
        seconds={"concept_images": concept_seconds}, vocabulary=data.vocabulary(),
    )
