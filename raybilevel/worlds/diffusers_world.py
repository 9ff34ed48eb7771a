"""A World from a Stable Diffusion 1.x/2.x pipeline (folder or hub id), real images and concept prompts.

The UNet denoises VAE latents: fine-tuning images, concept images and evaluation samples all pass through
the teacher's VAE. Concept images drawn from the teacher are cached on disk (RAYBILEVEL_CACHE, default
~/.cache/raybilevel) because sampling them is the slowest part of building the world.
"""
from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from raybilevel.config import WorldConfig
from raybilevel.errors import ConfigError, UserError
from raybilevel.sampling import sample
from raybilevel.text import PromptEncoder
from raybilevel.worlds.base import ConceptData, World, cache_dir, cache_key, save_tensors_atomic
from raybilevel.worlds.clip_judge import ClipJudge
from raybilevel.worlds.datasets import (ImageCaptions, ImageCaptionStream, LatentDataset, dataset_identity,
                                        encode_pixels, files_source, first_line, image_files, load_source)
from raybilevel.worlds.fid import InceptionFeatures
from raybilevel.worlds.nudenet import NudeNetJudge
from raybilevel.worlds.prompt_sets import load_prompt_set, read_table
from raybilevel.worlds.sd_evaluator import SDEvaluator

PARTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")
N_PRESERVATION_PROMPTS = 8


@dataclass
class Teacher:
    unet: torch.nn.Module
    vae: torch.nn.Module
    prompts: PromptEncoder
    scheduler_config: dict
    folder: Path


def resolve_pipeline(pretrained: str) -> Path:
    """The local folder of `pretrained`: itself, or a hub snapshot of the parts the world loads."""
    folder = Path(pretrained)
    if not folder.is_dir():
        if folder.is_absolute():  # never a hub id: say so rather than relay the hub's id-format complaint
            raise ConfigError("world.pretrained", f"no folder at {folder}; give an SD 1.x/2.x pipeline folder or hub id")
        from diffusers import DiffusionPipeline

        try:
            # Components passed as None (the 1.2 GB safety checker) are not downloaded.
            folder = Path(DiffusionPipeline.download(pretrained, use_safetensors=True, safety_checker=None,
                                                     feature_extractor=None))
        except (OSError, ValueError) as error:
            raise ConfigError("world.pretrained", f"{pretrained!r} is neither a folder nor a reachable hub id "
                              f"({first_line(error)}); give an SD 1.x/2.x pipeline folder or hub id") from None
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ConfigError("world.pretrained", f"{folder} lacks {', '.join(missing)}; "
                          f"an SD 1.x/2.x pipeline folder holds {', '.join(PARTS)}")
    return folder


def _load_part(load: Callable, folder: Path, part: str, **kwargs) -> Any:
    try:
        return load(folder, subfolder=part, **kwargs)
    except (OSError, ValueError) as error:
        raise ConfigError("world.pretrained", f"cannot load {folder / part} ({first_line(error)}); "
                          "SD 1.x/2.x parts with safetensors weights are needed") from None


def _training_scheduler_config(raw: dict) -> dict:
    from diffusers import DDPMScheduler

    name = raw.get("_class_name", "DDPMScheduler")
    if name not in DDPMScheduler._compatibles:
        raise ConfigError("world.pretrained", f"scheduler/ holds a {name}, not a DDPM-family (beta schedule) scheduler")
    # Latents are not bounded to [-1, 1]: clipping predicted x0 is wrong for them (SD pipelines turn it off too).
    return dict(DDPMScheduler.from_config({**raw, "clip_sample": False}).config)


def load_teacher(pretrained: str, device: str | torch.device) -> Teacher:
    """The frozen UNet, VAE, text stack and training-scheduler config of a pipeline folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_pipeline(pretrained)

    def frozen(model: Any, part: str) -> torch.nn.Module:
        loaded = _load_part(model.from_pretrained, folder, part, use_safetensors=True)
        return loaded.to(device).eval().requires_grad_(False)

    tokenizer = _load_part(CLIPTokenizer.from_pretrained, folder, "tokenizer")
    scheduler = _training_scheduler_config(_load_part(DDPMScheduler.load_config, folder, "scheduler"))
    return Teacher(unet=frozen(UNet2DConditionModel, "unet"), vae=frozen(AutoencoderKL, "vae"),
                   prompts=PromptEncoder(tokenizer, frozen(CLIPTextModel, "text_encoder")), scheduler_config=scheduler,
                   folder=folder)


def read_concept_prompts(path: str, default_anchor: str) -> tuple[list[str], list[str]]:
    """(prompts, anchors) from a .txt (one prompt per line) or a .csv (`prompt`, optional `anchor`)."""
    rows, columns = read_table(path, "world.concept_prompts", "one prompt per line (.txt) or columns "
                               "prompt[,anchor] (.csv)")
    if "prompt" not in columns:
        raise ConfigError("world.concept_prompts", f"{path} has no 'prompt' column; its columns: {', '.join(columns)}")
    rows = [row for row in rows if (row["prompt"] or "").strip()]
    if not rows:
        raise ConfigError("world.concept_prompts", f"{path} holds no prompts")
    # An empty or absent anchor cell means the world's default anchor.
    return [row["prompt"].strip() for row in rows], [(row.get("anchor") or default_anchor).strip() for row in rows]


def check_no_concept(captions: list[str], concept: str) -> None:
    """The method's premise: fine-tuning data never shows the concept, so its captions never name it."""
    pattern = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
    hits = [caption for caption in captions if pattern.search(caption)]
    if hits:
        raise UserError(f"the fine-tuning data contains the concept {concept!r} in {len(hits)} captions "
                        f"(e.g. {hits[0]!r}); filter those rows out of world.dataset")


@dataclass
class PromptSampler:
    """Text to images in [-1, 1] with the world's sampler settings, for the teacher or any student UNet."""

    teacher: Teacher
    sample_shape: tuple[int, int, int]
    steps: int
    guidance: float
    batch_size: int = 16  # SD-sized UNets and VAEs at 512 px: larger batches crowd one GPU

    def __call__(self, unet: torch.nn.Module, prompts: list[str], generator: torch.Generator,
                 batch_size: int = 0) -> torch.Tensor:
        encode = self.teacher.prompts
        return sample(unet, self.teacher.scheduler_config, encode(prompts), encode([""])[0], steps=self.steps,
                      guidance=self.guidance, generator=generator, sample_shape=self.sample_shape,
                      vae=self.teacher.vae, batch_size=batch_size or self.batch_size)


def concept_sample_file(cfg: WorldConfig, prompts: list[str], sampler: PromptSampler, seed: int) -> Path:
    """Where teacher samples for these settings are cached: named by a hash of everything that shapes them."""
    teacher = str(Path(cfg.pretrained).resolve()) if Path(cfg.pretrained).exists() else cfg.pretrained
    key = cache_key([teacher, prompts, cfg.n_concept_images, sampler.steps, sampler.guidance, seed,
                     list(sampler.sample_shape)])
    return cache_dir() / "concept_images" / f"{key}.safetensors"


def sample_concept_latents(cfg: WorldConfig, prompts: list[str], sampler: PromptSampler,
                           seed: int) -> tuple[torch.Tensor, list[str]]:
    """n teacher samples of the prompts (cycled), as latents; read from the cache when present."""
    image_prompts = [prompts[i % len(prompts)] for i in range(cfg.n_concept_images)]
    file = concept_sample_file(cfg, prompts, sampler, seed)
    if file.is_file():
        return load_file(file)["latents"], image_prompts
    images = sampler(sampler.teacher.unet, image_prompts, torch.Generator().manual_seed(seed))
    # Re-encoding the decoded samples (not keeping the sampler's latents) gives latents distributed like the
    # fine-tuning data's: posterior means of real pixels.
    latents = encode_pixels(sampler.teacher.vae, images)
    save_tensors_atomic(file, {"latents": latents})
    return latents, image_prompts


def caption_vocabulary(texts: list[str], size: int = 256) -> list[str]:
    """The `size` commonest words of the concept prompts and captions: the words a prompt attack tries."""
    counts = Counter(word for text in texts for word in re.findall(r"[a-z]+", text.lower()))
    return [word for word, _ in counts.most_common(size)]


def folder_concept_latents(cfg: WorldConfig, prompts: list[str], vae: torch.nn.Module,
                           resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Encode a folder of concept images; image i is paired with prompt i mod len(prompts)."""
    folder = Path(cfg.concept_images)
    files = image_files(folder) if folder.is_dir() else []
    if not files:
        raise ConfigError("world.concept_images", f"no images in {folder}; give a folder of concept images or leave "
                          "it empty to sample them from the teacher")
    image_prompts = [prompts[i % len(prompts)] for i in range(len(files))]
    encoded = LatentDataset(files_source(files, image_prompts), vae, resolution, cache_latents=True)
    return encoded.get_batch(list(range(len(files))))


def build_evaluator(cfg: WorldConfig, judge: ClipJudge, sampler: PromptSampler, concept: ConceptData,
                    data: LatentDataset, resolution: int, device: str | torch.device) -> SDEvaluator:
    """The SDEvaluator of `cfg.metrics`; reference images default to the fine-tuning data's."""
    metrics = cfg.metrics
    reference = data
    if metrics.reference.path:
        reference = LatentDataset(load_source(metrics.reference), sampler.teacher.vae, resolution, cache_latents=False)
    # Everything but (n, seed, batch size) that decides the teacher's concept samples and their CLIP scores.
    baseline_key = json.dumps([str(sampler.teacher.folder.resolve()), concept.prompts, sampler.steps,
                               sampler.guidance, list(sampler.sample_shape), judge.path])
    return SDEvaluator(
        judge, sampler, concept, reference,
        teacher=sampler.teacher.unet if metrics.changed_prompts else None,
        baseline_cache=cache_dir() / "teacher_similarities", baseline_key=baseline_key,
        inception=InceptionFeatures(metrics.fid_weights, device) if metrics.fid_weights else None,
        nudenet=NudeNetJudge(metrics.nudenet_threshold) if metrics.nudenet else None,
        prompt_sets=[load_prompt_set(path, category=metrics.prompt_set_category) for path in metrics.prompt_sets])


def build_diffusers_world(cfg: WorldConfig, seed: int, device: str | torch.device = "cpu",
                          judge_path: str | None = None) -> World:
    """The World of `cfg` (kind "diffusers"); `judge_path` defaults to $RAYBILEVEL_CLIP_JUDGE."""
    # Cheap checks first: a wrong path should fail before any model loads or latent is encoded.
    prompts, anchors = read_concept_prompts(cfg.concept_prompts, cfg.anchor_prompt)
    source = load_source(cfg.dataset)
    if isinstance(source, ImageCaptions):
        check_no_concept(source.captions, cfg.concept)
    judge = ClipJudge(judge_path, device)
    teacher = load_teacher(cfg.pretrained, device)

    vae_scale = 2 ** (len(teacher.vae.config.block_out_channels) - 1)
    resolution = cfg.resolution or teacher.unet.config.sample_size * vae_scale
    unet_scale = 2 ** (len(teacher.unet.config.block_out_channels) - 1)
    if resolution % (vae_scale * unet_scale):
        raise ConfigError("world.resolution", f"{resolution} is not a multiple of {vae_scale * unet_scale} "
                          "(the VAE's and UNet's downsampling); pick one that is")
    sample_shape = (teacher.unet.config.in_channels, resolution // vae_scale, resolution // vae_scale)
    sampler = PromptSampler(teacher, sample_shape, steps=cfg.sampling_steps or 25, guidance=cfg.guidance or 7.5)

    data = LatentDataset(source, teacher.vae, resolution, cfg.dataset.cache_latents, cfg.dataset.latent_cache,
                         identity=dataset_identity(cfg.dataset))
    if isinstance(source, ImageCaptionStream):
        check_no_concept(data.captions, cfg.concept)  # a stream's captions arrive with its rows
    began = time.perf_counter()
    images, image_prompts = (folder_concept_latents(cfg, prompts, teacher.vae, resolution) if cfg.concept_images
                             else sample_concept_latents(cfg, prompts, sampler, seed))
    concept_seconds = time.perf_counter() - began
    unique_captions = sorted(set(data.captions))
    preservation = random.Random(seed).sample(unique_captions, min(N_PRESERVATION_PROMPTS, len(unique_captions)))
    concept = ConceptData(name=cfg.concept, prompts=prompts, anchor_prompts=anchors, images=images,
                          image_prompts=image_prompts, preservation_prompts=preservation)
    return World(
        name=f"diffusers:{cfg.pretrained}", teacher=teacher.unet, prompts=teacher.prompts,
        scheduler_config=teacher.scheduler_config, sample_shape=sample_shape, finetune=data, concept=concept,
        evaluator=build_evaluator(cfg, judge, sampler, concept, data, resolution, device), vae=teacher.vae,
        pipeline_folder=teacher.folder,
        sampling={"steps": sampler.steps, "guidance": sampler.guidance, "batch_size": sampler.batch_size},
        info={"pretrained": cfg.pretrained, "resolution": resolution, "clip_judge": judge.path,
              "quality": "fid (Inception)" if cfg.metrics.fid_weights else
              "clip_fd: Frechet distance of CLIP image features, not Inception FID"},
        seconds={"concept_images": concept_seconds}, vocabulary=caption_vocabulary(prompts + data.captions))
