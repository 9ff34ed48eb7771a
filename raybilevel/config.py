"""The typed config tree: YAML + `--set key=value` overrides, validated with one-line errors.

A run is fully described by its resolved config (saved as `config.yaml` in the run directory). Names of
pruning methods, unlearning losses and solvers are checked against their registries when the run is
built (raybilevel/build.py), so that adding one needs no edit here.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raybilevel.errors import ConfigError


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(path, message)


@dataclass
class DatasetConfig:
    """Fine-tuning data for a diffusers world.

    Args:
        kind: "imagefolder" (a folder with images and metadata.jsonl), "hf" (a datasets name or saved
            path), or "coco" (a COCO 2017 layout: images folder + captions_*.json).
        path: folder, dataset name, or COCO root.
        split: dataset split to read.
        image_column / caption_column: column names for "hf" and "imagefolder".
        captions_file: COCO captions json, relative to `path` (for "coco").
        max_samples: keep at most this many rows (0 = all).
        cache_latents: encode every image through the VAE once and keep the latents (in memory, or in
            `latent_cache` when set); false encodes each batch on demand.
        latent_cache: a folder for latents on disk: encoded once in shards, reused by later runs and trials
            of the same dataset, resolution and VAE, memory-mapped rather than loaded; an interrupted
            encoding resumes from its last finished shard. "" keeps latents in memory.
        streaming: read an "hf" dataset as a stream (`load_dataset(..., streaming=True)`), for sets too large
            to download first; rows are encoded once, in order, so it needs cache_latents.
    """

    kind: str = "imagefolder"
    path: str = ""
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "text"
    captions_file: str = "annotations/captions_train2017.json"
    max_samples: int = 0
    cache_latents: bool = True
    latent_cache: str = ""
    streaming: bool = False

    def validate(self, path: str) -> None:
        _check(self.kind in ("imagefolder", "hf", "coco"), f"{path}.kind",
               f"{self.kind!r} is not a dataset kind; use imagefolder, hf or coco")
        _check(self.max_samples >= 0, f"{path}.max_samples", "must be >= 0 (0 keeps all rows)")
        _check(not self.streaming or self.kind == "hf", f"{path}.streaming",
               f"only 'hf' datasets stream; set it false for kind {self.kind!r}")
        _check(not self.latent_cache or self.cache_latents, f"{path}.latent_cache",
               "latents on disk are cached latents: set cache_latents true, or latent_cache \"\"")
        _check(not self.streaming or self.cache_latents, f"{path}.streaming",
               "a stream cannot be read by index: set cache_latents true (and latent_cache for large sets)")


@dataclass
class MetricsConfig:
    """The diffusers world's evaluation beyond its CLIP judge (the paper's metrics), all from local files.

    Args:
        fid_weights: a TorchScript Inception feature network (clean-fid's inception-2015-12-05.pt). When
            set, `fid` is reported and becomes `quality`; empty = `quality` is the CLIP Fréchet distance.
        reference: captions to sample and real images to compare against for quality (e.g. COCO val);
            an empty path = the fine-tuning dataset.
        prompt_sets: prompt files sampled and judged on top (.txt, .csv, I2P, MMA-Diffusion, Ring-A-Bell
            CSVs; format detected from the columns); each reports CLIP similarity to the concept and, with
            `nudenet`, NudeNet detections. At most eval.n_samples prompts per set.
        prompt_set_category: keep only I2P rows of this category (e.g. "sexual"); empty = all rows.
        nudenet: count NudeNet's 9 exposed labels on prompt-set samples (needs `raybilevel[nsfw]`).
        nudenet_threshold: detections count above this score (the paper: 0.5).
        changed_prompts: report `cp_share`, the share of concept prompts whose CLIP similarity fell
            against the teacher's samples of the same prompts and noise (teacher samples are cached).
    """

    fid_weights: str = ""
    reference: DatasetConfig = field(default_factory=DatasetConfig)
    prompt_sets: list[str] = field(default_factory=list)
    prompt_set_category: str = ""
    nudenet: bool = False
    nudenet_threshold: float = 0.5
    changed_prompts: bool = True

    def validate(self, path: str) -> None:
        if self.reference.path:
            self.reference.validate(f"{path}.reference")
            _check(not self.reference.streaming, f"{path}.reference.streaming",
                   "reference images are read by index; set streaming false")
        _check(0 < self.nudenet_threshold < 1, f"{path}.nudenet_threshold", "must be in (0, 1); the paper uses 0.5")


@dataclass
class WorldConfig:
    """Where the teacher, data, concept and judges come from.

    Args:
        kind: "toy" (the embedded world, the default) or "diffusers" (an SD 1.x/2.x folder or hub id).
        concept: the concept to erase. Toy: an attribute value such as "striped" or "cross".
            Diffusers: a label for the concept whose prompts are in `concept_prompts`.
        toy_images: size of the toy fine-tuning set (it never holds the concept).
        toy_teacher: the toy teacher's folder in the assets: "teacher" (4,000 steps, the default) or
            "teacher_6000" (the same recipe run for 6,000 steps; see the README).
        pretrained: diffusers folder or hub id of the teacher pipeline (diffusers worlds).
        dataset: fine-tuning data (diffusers worlds).
        concept_prompts: a .txt (one prompt per line) or .csv (column `prompt`, optional `anchor`) file.
        anchor_prompt: anchor used where a concept prompt has none ("" = the empty prompt).
        concept_images: a folder of concept images; empty = sample them from the teacher.
        clip_judge: a local CLIP folder (or hub id) for the diffusers world's metrics; empty = the
            RAYBILEVEL_CLIP_JUDGE environment variable.
        n_concept_images: how many teacher samples to draw (and cache) for the upper level.
        resolution: image size for diffusers data and sampling (0 = the UNet's native size).
        sampling_steps / guidance: the world's sampler settings for concept images and evaluation
            (0 = the world's own defaults).
        metrics: the diffusers world's further metrics (FID, CP, prompt sets, NudeNet).
    """

    kind: str = "toy"
    concept: str = "striped"
    toy_images: int = 8000
    toy_teacher: str = "teacher"
    pretrained: str = ""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    concept_prompts: str = ""
    anchor_prompt: str = ""
    concept_images: str = ""
    clip_judge: str = ""
    n_concept_images: int = 128
    resolution: int = 0
    sampling_steps: int = 0
    guidance: float = 0.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self, path: str) -> None:
        _check(self.kind in ("toy", "diffusers"), f"{path}.kind", f"{self.kind!r} is not a world; use toy or diffusers")
        _check(bool(self.concept), f"{path}.concept", "name the concept to erase")
        _check(self.toy_images >= 64, f"{path}.toy_images", "must be >= 64")
        _check(bool(self.toy_teacher) and "/" not in self.toy_teacher and not self.toy_teacher.startswith("."),
               f"{path}.toy_teacher", f"{self.toy_teacher!r} is not a folder name; use teacher or teacher_6000")
        _check(self.n_concept_images >= 1, f"{path}.n_concept_images", "must be >= 1")
        _check(self.sampling_steps >= 0 and self.guidance >= 0, f"{path}.sampling_steps",
               "sampling_steps and guidance must be >= 0")
        if self.kind == "diffusers":
            _check(bool(self.pretrained), f"{path}.pretrained", "set a diffusers folder or hub id for the teacher")
            _check(bool(self.dataset.path), f"{path}.dataset.path", "set the fine-tuning dataset")
            _check(bool(self.concept_prompts), f"{path}.concept_prompts", "set a .txt or .csv file of concept prompts")
        self.dataset.validate(f"{path}.dataset")
        self.metrics.validate(f"{path}.metrics")

    def check_prompt_files(self) -> None:
        """The prompt files a diffusers world reads exist. Not part of validate(): configs are also loaded where
        they are not read (export) or not yet resolved (a search space's paths, relative to its file or on a
        cluster). train, prune and eval check them before their heavy imports, tune once it resolved the
        space's paths; --dry-run as the real run."""
        if self.kind != "diffusers":
            return
        files = [("concept_prompts", self.concept_prompts)] + [("metrics.prompt_sets", f) for f in self.metrics.prompt_sets]
        for key, file in files:
            _check(Path(file).is_file() and Path(file).suffix in (".txt", ".csv"), f"world.{key}",
                   f"no .txt or .csv file at {file}; fix the path, or give a .txt (one prompt per line) or .csv of prompts")


@dataclass
class PruningConfig:
    """How the student is made from the teacher.

    Args:
        method: a registered pruning method: magnitude, channels, blocks, load, none.
        sparsity: fraction of weights (magnitude) or channels (channels) to remove, in [0, 1).
        path: a saved pruned student (method "load").
    """

    method: str = "channels"
    sparsity: float = 0.25  # the regime study's choice (README, "The regime study")
    path: str = ""

    def validate(self, path: str) -> None:
        _check(0.0 <= self.sparsity < 1.0, f"{path}.sparsity", f"{self.sparsity} is out of range; use 0 <= sparsity < 1")
        _check(self.method != "load" or bool(self.path), f"{path}.path", "method 'load' needs the student folder in path")


@dataclass
class LowerConfig:
    """Lower level: restore quality. L_ft = w_diff L_diff + w_out L_outKD + w_feat L_featKD.

    Args:
        w_diff / w_out / w_feat: loss weights (reference: DDPM 1/0/0, distillation 0/2/0.1, both 1/2/0.1).
        taps: feature-KD taps: "down" (every down block), "mid", "up" (every up block), or "down.0" etc.
        min_snr_gamma: Min-SNR-gamma weighting of L_diff (0 = off; 5 in the reference runs).
        caption_drop: share of captions replaced by the empty prompt (keeps guidance working).
        lr: learning rate of lower steps. batch_size: per process, per micro-step.
    """

    w_diff: float = 1.0
    w_out: float = 2.0
    w_feat: float = 0.1
    taps: list[str] = field(default_factory=lambda: ["down", "mid", "up"])
    min_snr_gamma: float = 0.0
    caption_drop: float = 0.1
    lr: float = 5e-5  # with solver.warmup_steps 30 and a cosine decay: the regime study's choice
    batch_size: int = 16

    def validate(self, path: str) -> None:
        for name in ("w_diff", "w_out", "w_feat", "min_snr_gamma"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", "must be >= 0")
        _check(self.w_diff + self.w_out + self.w_feat > 0, f"{path}.w_diff", "at least one lower-level weight must be > 0")
        _check(0 <= self.caption_drop < 1, f"{path}.caption_drop", "must be in [0, 1)")
        _check(self.lr > 0, f"{path}.lr", "must be > 0")
        _check(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        for tap in self.taps:
            _check(tap.split(".")[0] in ("down", "mid", "up"), f"{path}.taps", f"{tap!r} is not a tap; use down, mid, up or down.N / up.N")


@dataclass
class UpperConfig:
    """Upper level: suppress the concept.

    Args:
        method: a registered unlearning loss: esd_x, esd_u, esd (all parameters), ablation.
        eta: ESD negative-guidance strength.
        anchor: "empty" (the empty prompt, ESD's default) or "neighbour" (the concept's anchor prompt).
        preservation_weight: weight of a term keeping the teacher's outputs on unrelated prompts (0 = off).
        lr: learning rate of upper steps. batch_size: per process.
    """

    method: str = "esd_x"
    eta: float = 1.0
    anchor: str = "neighbour"
    preservation_weight: float = 0.0
    lr: float = 1e-4
    batch_size: int = 16

    def validate(self, path: str) -> None:
        _check(self.eta >= 0, f"{path}.eta", "must be >= 0")
        _check(self.anchor in ("empty", "neighbour"), f"{path}.anchor", f"{self.anchor!r}: use empty or neighbour")
        _check(self.preservation_weight >= 0, f"{path}.preservation_weight", "must be >= 0")
        _check(self.lr > 0, f"{path}.lr", "must be > 0")
        _check(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")


@dataclass
class SolverConfig:
    """Which parameters step on which loss, when.

    Args:
        name: bome, adaptive, penalty, alternating, distill_only, two_stage, joint.
        K: lower steps per upper step (alternating), inner steps per outer step (penalty), iterations
            between value-gap measurements (adaptive).
        lam: penalty weight lambda (penalty; the start value for adaptive).
        mu: weight of L_cu in the joint baseline's sum.
        erase_fraction: share of the step budget two_stage spends erasing (after distilling).
        gap_tolerance / lam_rate / lam_max: adaptive: lambda grows while the relative value gap exceeds
            gap_tolerance, by exp(lam_rate * excess) per measurement, up to lam_max (also bome's cap).
        gap_ema: weight of the past in the value gap's moving average (adaptive); 0 = the last value.
        keep: bome: the share of the lower loss's first-order decrease every combined step must keep.
        lam_min: bome: the smallest lambda; the erasure step is upper.lr / lambda (1 = a full upper step).
        warmup_steps: linear learning-rate warm-up of every optimizer.
        lr_schedule: constant, or cosine (decay to 0 at the last step, after the warm-up).
    """

    name: str = "alternating"
    K: int = 10
    lam: float = 100.0
    mu: float = 0.1
    erase_fraction: float = 0.1
    gap_tolerance: float = 0.05
    lam_rate: float = 0.5
    lam_max: float = 1e4
    gap_ema: float = 0.9
    keep: float = 0.5
    lam_min: float = 1.0
    warmup_steps: int = 30
    lr_schedule: str = "cosine"

    def validate(self, path: str) -> None:
        _check(self.K >= 1, f"{path}.K", f"K={self.K} is invalid; use an integer >= 1")
        _check(self.lam >= 0, f"{path}.lam", f"lam={self.lam} is negative; use lam >= 0")
        _check(self.mu >= 0, f"{path}.mu", "must be >= 0")
        _check(0 < self.erase_fraction < 1, f"{path}.erase_fraction", "must be in (0, 1)")
        _check(self.gap_tolerance >= 0 and self.lam_rate >= 0, f"{path}.gap_tolerance", "gap_tolerance and lam_rate must be >= 0")
        _check(self.lam_max >= self.lam, f"{path}.lam_max", "must be >= lam")
        _check(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0")
        _check(self.lr_schedule in ("constant", "cosine"), f"{path}.lr_schedule", f"{self.lr_schedule!r}: use constant or cosine")
        _check(0 <= self.gap_ema < 1, f"{path}.gap_ema", "must be in [0, 1)")
        _check(0 <= self.keep < 1, f"{path}.keep", "must be in [0, 1): the share of the lower level's decrease kept")
        _check(0 < self.lam_min <= self.lam_max, f"{path}.lam_min", "must be > 0 and <= lam_max")


PRECISIONS = ("fp32", "bf16", "bf16_autocast")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
OFFLOADS = ("none", "optimizer", "optimizer_and_params")


@dataclass
class EngineConfig:
    """DeepSpeed settings and the speed options of the training models (raybilevel/acceleration.py).

    Args:
        zero_stage: ZeRO stage 0-3 (Stable Diffusion runs: 2; 3 also partitions the weights).
        precision: fp32; bf16 (DeepSpeed's bf16: weights, activations and gradients in bf16, fp32 master
            weights and moments in the optimizer); bf16_autocast (fp32 weights and optimizer, forward passes
            under torch.autocast(bfloat16) through DeepSpeed's torch_autocast: matmuls and convolutions in
            bf16, normalisations and softmax in fp32; ZeRO reduces those layers' gradients in bf16).
        grad_accum: micro-steps per optimizer step. grad_clip: gradient-norm clip (0 = off).
        gradient_checkpointing: the student recomputes its blocks' activations during backward (diffusers'
            enable_gradient_checkpointing): much less activation memory for about one more forward pass.
        channels_last: the inputs of both UNets and the teacher's weights in channels-last (NHWC) memory
            format, which GPU convolutions prefer; the student's convolutions follow their input (its weights
            stay NCHW: DeepSpeed broadcasts and flattens parameters as contiguous tensors).
        compile: torch.compile the student's forward, in place (Module.compile): parameter names, DeepSpeed
            checkpoints and saved students stay as without it. The first steps are slow (compilation).
        compile_backend: the torch.compile backend: inductor (GPU runs), aot_eager or eager (tests, debugging).
        teacher_dtype: the frozen teacher's weights: auto (bf16 when precision is bf16 or bf16_autocast, else
            fp32), fp32 or bf16. It never builds an autograd graph; its outputs and features are cast to fp32
            before any loss, so the distillation losses are computed in fp32.
        offload: none; optimizer (ZeRO-Offload: fp32 master weights and both levels' moments live in CPU
            memory and the optimizer step runs on the CPU; zero_stage >= 1); optimizer_and_params (also the
            weights, fetched to the GPU per layer; zero_stage 3).
    """

    zero_stage: int = 0
    precision: str = "fp32"
    grad_accum: int = 1
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    teacher_dtype: str = "auto"
    offload: str = "none"

    def validate(self, path: str) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), f"{path}.zero_stage", f"{self.zero_stage} is not a ZeRO stage; use 0, 1, 2 or 3")
        _check(self.precision in PRECISIONS, f"{path}.precision", f"{self.precision!r}: use fp32, bf16 or bf16_autocast")
        _check(self.grad_accum >= 1, f"{path}.grad_accum", "must be >= 1")
        _check(self.grad_clip >= 0, f"{path}.grad_clip", "must be >= 0")
        _check(self.compile_backend in COMPILE_BACKENDS, f"{path}.compile_backend",
               f"{self.compile_backend!r}: use inductor, aot_eager or eager")
        _check(self.teacher_dtype in ("auto", "fp32", "bf16"), f"{path}.teacher_dtype", f"{self.teacher_dtype!r}: use auto, fp32 or bf16")
        _check(self.offload in OFFLOADS, f"{path}.offload", f"{self.offload!r}: use none, optimizer or optimizer_and_params")
        _check(self.offload == "none" or self.zero_stage >= 1, f"{path}.offload",
               f"offload {self.offload} needs ZeRO's partitions; set engine.zero_stage=2 (or 3), or engine.offload=none")
        _check(self.offload != "optimizer_and_params" or self.zero_stage == 3, f"{path}.offload",
               "offload optimizer_and_params needs engine.zero_stage=3 (only ZeRO-3 partitions the weights); "
               "set it, or use engine.offload=optimizer")


@dataclass
class TrainConfig:
    """The step loop. steps counts solver iterations (one lower step each; see the solver's budget).

    Args:
        steps: solver iterations. log_every: scalar logging period. checkpoint_every: 0 = only at the end.
        compute_budget: when > 0, the budget in multiply-accumulates (e.g. 5e12) instead of steps: the run
            takes as many iterations of its solver as fit (teacher forwards, student forwards and
            backwards at two forwards each, counted per sample by solvers/compute.py); steps is ignored.
        eval_at_start: also evaluate the student before its first step (the step-0 point of the curves).
        sample_every: sample-grid period for TensorBoard (0 = off). keep_checkpoints: how many to keep.
        eval_every: evaluate the student with `eval`'s settings every this many steps during training
            (0 = off); each result lands in evals.jsonl, TensorBoard (eval/*) and the caller's hooks.
        eval_fractions: also evaluate at these fractions of the run's steps (each in (0, 1)): a sweep
            scheduler's rungs, at the same share of every trial's budget whatever its solver's step cost.
        on_nonfinite: a NaN/inf loss stops the run with its step and terms ("stop"), or skips that
            optimizer step, weights and moments untouched ("skip"; counted as skipped_steps).
        max_skipped_steps: with "skip", more skipped steps than this stop the run as diverged.
    """

    steps: int = 300
    compute_budget: float = 0.0
    eval_at_start: bool = False
    log_every: int = 10
    checkpoint_every: int = 150
    sample_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_fractions: list[float] = field(default_factory=list)
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 10

    def validate(self, path: str) -> None:
        _check(self.steps >= 1, f"{path}.steps", "must be >= 1")
        _check(self.compute_budget >= 0, f"{path}.compute_budget", "must be >= 0 MACs (0 = use train.steps)")
        _check(self.on_nonfinite in ("stop", "skip"), f"{path}.on_nonfinite", f"{self.on_nonfinite!r}: use stop or skip")
        _check(self.max_skipped_steps >= 0, f"{path}.max_skipped_steps", "must be >= 0")
        _check(self.log_every >= 1, f"{path}.log_every", "must be >= 1")
        _check(self.checkpoint_every >= 0 and self.sample_every >= 0, f"{path}.checkpoint_every", "must be >= 0")
        _check(self.eval_every >= 0, f"{path}.eval_every", "must be >= 0 (0 = only at the end)")
        _check(all(0 < f < 1 for f in self.eval_fractions), f"{path}.eval_fractions",
               f"{self.eval_fractions}: each must lie strictly between 0 and 1 (the end is always evaluated)")
        _check(self.keep_checkpoints >= 1, f"{path}.keep_checkpoints", "must be >= 1")


@dataclass
class AttackConfig:
    """A prompt attack on the student after erasure (raybilevel/attack.py): attack_concept_rate.

    Args:
        enabled: run it in every evaluation (its settings land in eval_settings.attack).
        method: tokens (words from the world's vocabulary prepended, greedy coordinate search) or embedding
            (the prompt's encoder output moved by Adam inside a ball of `radius` times its norm).
        prompts: concept prompts attacked (the first ones that have concept images).
        draws: (image, timestep, noise) draws the denoising loss averages over, fixed per prompt.
        tokens / rounds: prepended words, and passes over them (tokens).
        steps / lr / radius: Adam steps, learning rate and the ball's relative radius (embedding).
    """

    enabled: bool = False
    method: str = "tokens"
    prompts: int = 4
    draws: int = 16
    tokens: int = 2
    rounds: int = 2
    steps: int = 50
    lr: float = 0.01
    radius: float = 0.5

    def validate(self, path: str) -> None:
        _check(self.method in ("tokens", "embedding"), f"{path}.method", f"{self.method!r}: use tokens or embedding")
        _check(min(self.prompts, self.draws, self.tokens, self.rounds, self.steps) >= 1, path,
               "prompts, draws, tokens, rounds and steps must be >= 1")
        _check(self.lr > 0 and self.radius > 0, path, "lr and radius must be > 0")


@dataclass
class EvalConfig:
    """Evaluation after training (and `raybilevel eval`).

    Args:
        n_samples: images per prompt group (concept, unrelated, paraphrase). seed: sampling seed.
        enabled: evaluate at the end of `train`.
        batch_size: images sampled at once (0 = the world's default: 256 toy, 16 diffusers).
        attack: a prompt attack on the student, reported as attack_concept_rate (off by default).
    The sampler's steps and guidance are the world's (world.sampling_steps, world.guidance); every
    result records the settings it was made with under `eval_settings`.
    """

    n_samples: int = 128
    seed: int = 1234
    enabled: bool = True
    batch_size: int = 0
    attack: AttackConfig = field(default_factory=AttackConfig)

    def validate(self, path: str) -> None:
        _check(self.n_samples >= 1, f"{path}.n_samples", "must be >= 1")
        _check(self.batch_size >= 0, f"{path}.batch_size", "must be >= 0 (0 = the world's default)")
        self.attack.validate(f"{path}.attack")


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RayConfig:
    """Ray Train (raybilevel/distributed.py): how many DeepSpeed workers, what each gets, where they go.

    Args:
        num_workers: training processes (ranks); one per GPU on a GPU cluster.
        use_gpu: give each worker GPUs (NCCL); false trains on CPU (gloo).
        cpus_per_worker / gpus_per_worker: resources each worker reserves (gpus only with use_gpu).
        placement_strategy: PACK (fill one node first), SPREAD (across nodes where possible),
            STRICT_PACK (one node or fail), STRICT_SPREAD (one worker per node or fail).
        storage_path: where Ray keeps checkpoints and run state: a local folder, a mount every node sees
            (NFS), or a URI (s3://, gs://); empty = the `ray/` folder in the sweep's --output.
        max_failures: restarts of the worker group, each from the latest checkpoint, before the run fails.
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"
    storage_path: str = ""
    max_failures: int = 0

    def validate(self, path: str) -> None:
        _check(self.num_workers >= 1, f"{path}.num_workers", "must be >= 1")
        _check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "must be > 0")
        _check(not self.use_gpu or self.gpus_per_worker > 0, f"{path}.gpus_per_worker", "must be > 0 with use_gpu")
        _check(self.placement_strategy in PLACEMENT_STRATEGIES, f"{path}.placement_strategy",
               f"{self.placement_strategy!r}: use one of {', '.join(PLACEMENT_STRATEGIES)}")
        _check(self.max_failures >= -1, f"{path}.max_failures", "must be >= 0 (or -1 for unlimited)")


@dataclass
class Config:
    """A whole run. `deterministic` turns on torch's deterministic algorithms for loss-exact resume."""

    seed: int = 0
    deterministic: bool = False
    world: WorldConfig = field(default_factory=WorldConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    lower: LowerConfig = field(default_factory=LowerConfig)
    upper: UpperConfig = field(default_factory=UpperConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check a YAML value against a field's type; ints are accepted where floats are expected."""
    if dataclasses.is_dataclass(annotation):
        _check(isinstance(value, dict), path, f"expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, path)
    origin = typing.get_origin(annotation)
    if origin is dict:
        _check(isinstance(value, dict), path, f"expected a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation) or (str, Any)
        return {key: _coerce(v, value_type, f"{path}.{key}") for key, v in value.items()}
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), path, f"expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"{value!r} does not fit {annotation}")
    if annotation is bool:
        _check(isinstance(value, bool), path, f"expected true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, f"expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, f"expected an integer, got {value!r}")
        return value
    if annotation is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), path, f"expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Typed parsing of any dataclass in this file's style (also used for search-space files)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            by_lower = {n.lower(): n for n in names}
            close = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1)
            hint = f"did you mean '{by_lower[close[0]]}'?" if close else f"known keys: {', '.join(names)}"
            raise ConfigError(where, f"unknown key; {hint}")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {"a.b": value}; the inverse of set_path."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        flat |= flatten(value, path + ".") if isinstance(value, dict) else {path: value}
    return flat


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["a"]["b"] = value for dotted "a.b", creating sections on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"'{part}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text}", "an override needs a value: key.path=value, e.g. --set solver.K=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def yaml_where(error: yaml.YAMLError) -> str:
    """" (line N)" for a YAML syntax error, where the parser knows it."""
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1})" if mark else ""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- `key=value` overrides, then validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", f"no file at {path}; pass an existing YAML file")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(str(path), f"malformed YAML{yaml_where(error)}; fix the syntax") from None
        if not isinstance(tree, dict):
            raise ConfigError(str(path), "the top level must be a mapping of sections")
    for text in overrides:
        key, value = parse_override(text)
        set_path(tree, key, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict[str, Any]) -> Config:
    return from_dict(Config, tree).validate()


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
