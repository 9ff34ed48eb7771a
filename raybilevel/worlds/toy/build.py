"""`raybilevel toy build`: train the toy world's teacher and judge and save them as shipped assets.

The shipped weights in raybilevel/worlds/toy/assets/ were made by this module with its defaults; a rerun
with the same seed on the same torch build reproduces them.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from raybilevel.text import PromptEncoder
from raybilevel.worlds.toy import data, models

ASSETS = Path(__file__).parent / "assets"  # where `raybilevel toy build` writes by default


def build_text_stack(out: Path, seed: int) -> PromptEncoder:
    tokenizer, text_encoder = models.build_tokenizer(), models.build_text_encoder(seed)
    tokenizer.save_pretrained(out / "tokenizer")
    text_encoder.save_pretrained(out / "text_encoder")
    models.build_scheduler().save_pretrained(out / "scheduler")
    return PromptEncoder(tokenizer, text_encoder)


def train_teacher(out: Path, *, seed: int = 0, steps: int = 3000, batch_size: int = 64, lr: float = 8e-4,
                  warmup: int = 200, ema_decay: float = 0.999, caption_drop: float = 0.1,
                  n_images: int = 19_200) -> dict:
    """Denoising training on the whole world; saves the EMA weights, which sample far cleaner."""
    torch.manual_seed(seed)
    encoder = build_text_stack(out, seed)
    scheduler = models.build_scheduler()
    unet = models.build_teacher_unet(seed)
    ema = copy.deepcopy(unet).requires_grad_(False)
    samples = data.generate(n_images, seed=seed)
    images = torch.from_numpy(samples.images)
    embeds = encoder(samples.captions)
    empty = encoder([""])[0]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    alphas = scheduler.alphas_cumprod
    rng = torch.Generator().manual_seed(seed)
    losses = []
    started = time.time()
    for step in tqdm(range(steps), desc="teacher", mininterval=10):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, len(images), (batch_size,), generator=rng)
        x0, cond = images[idx], embeds[idx].clone()
        cond[torch.rand(batch_size, generator=rng) < caption_drop] = empty
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=rng)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, cond).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
    ema.save_pretrained(out / "unet")
    return {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "ema_decay": ema_decay,
            "caption_drop": caption_drop, "n_images": n_images,
            "final_loss_mean_last100": float(np.mean(losses[-100:])), "seconds": time.time() - started}


def train_judge(out_file: Path, *, seed: int = 0, epochs: int = 6, n_images: int = 19_200) -> dict:
    torch.manual_seed(seed)
    judge = models.Judge()
    train, held_out = data.generate(n_images, seed=seed + 1), data.generate(2048, seed=seed + 2)
    images = torch.from_numpy(train.images)
    labels = {k: torch.from_numpy(v) for k, v in train.labels.items()}
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3)
    batches_per_epoch = -(-len(images) // 128)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * batches_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(128):
            _, logits = judge(images[idx])
            loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay.step()
    judge.eval()
    with torch.no_grad():
        _, logits = judge(torch.from_numpy(held_out.images))
    accuracy = {k: float((logits[k].argmax(1).numpy() == held_out.labels[k]).mean()) for k in logits}
    save_file(judge.state_dict(), out_file)
    return {"seed": seed, "epochs": epochs, "n_images": n_images, "held_out_accuracy": accuracy}


def build(out: Path = ASSETS, *, seed: int = 0, teacher_steps: int = 3000, judge_epochs: int = 6,
          n_images: int = 19_200, judge_only: bool = False) -> dict:
    """Train the judge (and the teacher unless judge_only) into `out`; the defaults made the shipped assets."""
    out.mkdir(parents=True, exist_ok=True)
    report_file = out / "build.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    report["judge"] = train_judge(out / "judge.safetensors", seed=seed, epochs=judge_epochs, n_images=n_images)
    if not judge_only:
        report["teacher"] = train_teacher(out / "teacher", seed=seed, steps=teacher_steps, n_images=n_images,
                                          warmup=min(200, teacher_steps // 2))
    report["torch"] = torch.__version__
    report_file.write_text(json.dumps(report, indent=2))
    return report
