"""`raybilevel toy build`: train the toy world's teacher and judge and save them as shipped assets.

The shipped weights in raybilevel/worlds/toy/assets/ were made by this module with its defaults; a rerun
with the same seed on the same torch build reproduces them.
"""
from __future__ import annotations

import copy
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from raybilevel.atomic import write_bytes_atomic
from raybilevel.errors import UserError
from raybilevel.faults import crash_point
from raybilevel.text import PromptEncoder
from raybilevel.worlds.toy import data, models

ASSETS = Path(__file__).parent / "assets"  # where `raybilevel toy build` writes by default


def build_text_stack(out: Path, seed: int) -> PromptEncoder:
    tokenizer, text_encoder = models.build_tokenizer(), models.build_text_encoder(seed)
    tokenizer.save_pretrained(out / "tokenizer")
    text_encoder.save_pretrained(out / "text_encoder")
    models.build_scheduler().save_pretrained(out / "scheduler")
    return PromptEncoder(tokenizer, text_encoder)


RESUME_FILE = "resume.pt"  # in the teacher folder while it trains; removed once unet/ is written


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())  # a kill mid-save leaves the previous checkpoint


def _load_resume(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    for key, value in settings.items():
        if state["settings"].get(key) != value:
            raise UserError(f"{path}: a teacher build with {key}={state['settings'].get(key)} is in progress, "
                            f"not {value}: rerun it with the same settings, or delete the file to start over")
    return state


def train_teacher(out: Path, *, seed: int = 0, steps: int = 4000, batch_size: int = 64, lr: float = 8e-4,
                  warmup: int = 200, ema_decay: float = 0.999, caption_drop: float = 0.1,
                  n_images: int = 19_200, checkpoint_every: int = 250) -> dict:
    """Denoising training on the whole world; saves the EMA weights, which sample far cleaner.

    Every `checkpoint_every` steps the weights, the EMA, the optimizer, the batch generator and the losses
    go to out/resume.pt, and a rerun into the same folder continues from there on the same loss curve
    (a 6,000-step build is about 100 minutes of 2 cores: longer than a session may have left).
    """
    settings = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                "ema_decay": ema_decay, "caption_drop": caption_drop, "n_images": n_images}
    out.mkdir(parents=True, exist_ok=True)
    resume = _load_resume(out / RESUME_FILE, settings)
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
    losses: list[float] = []
    start, seconds_before = 0, 0.0
    if resume is not None:
        unet.load_state_dict(resume["unet"])
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        rng.set_state(resume["rng"])
        losses, start, seconds_before = resume["losses"].tolist(), resume["step"], resume["seconds"]
    started = time.time()
    for step in tqdm(range(start, steps), desc="teacher", mininterval=10, initial=start, total=steps):
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
        crash_point("step")
        done = step + 1
        if checkpoint_every and done % checkpoint_every == 0 and done < steps:
            _save_resume(out / RESUME_FILE, {
                "step": done, "settings": settings, "unet": unet.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": rng.get_state(),
                "losses": torch.tensor(losses, dtype=torch.float64), "seconds": seconds_before + time.time() - started})
    ema.save_pretrained(out / "unet")
    (out / RESUME_FILE).unlink(missing_ok=True)
    return {**settings, "resumed_from": start,
            "final_loss_mean_last100": float(np.mean(losses[-100:])),
            "seconds": seconds_before + time.time() - started}


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


def build(out: Path = ASSETS, *, seed: int = 0, teacher_steps: int = 4000, judge_epochs: int = 6,
          n_images: int = 19_200, judge_only: bool = False, checkpoint_every: int = 250) -> dict:
    """Train the judge (and the teacher unless judge_only) into `out`; the defaults made the shipped assets."""
    out.mkdir(parents=True, exist_ok=True)
    report_file = out / "build.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    report["judge"] = train_judge(out / "judge.safetensors", seed=seed, epochs=judge_epochs, n_images=n_images)
    if not judge_only:
        report["teacher"] = train_teacher(out / "teacher", seed=seed, steps=teacher_steps, n_images=n_images,
                                          warmup=min(200, teacher_steps // 2), checkpoint_every=checkpoint_every)
    report["torch"] = torch.__version__
    report_file.write_text(json.dumps(report, indent=2))
    return report
