"""Students exported as Stable Diffusion pipeline folders that stock diffusers loads and samples from."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline

from helpers import cli
from raybilevel.export import export_pipeline, plain_unet
from raybilevel.pruning import prune, save_student
from raybilevel.worlds.diffusers_world import load_teacher
from raybilevel.worlds.tiny_sd import build_tiny_sd_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


def digest(folder: Path) -> str:
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def sample(pipe: StableDiffusionPipeline) -> torch.Tensor:
    return pipe("a red circle", num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("method, plain", [("blocks", True), ("magnitude", True), ("channels", False)])
def test_stock_pipeline_loads_and_samples_from_the_exported_student(pipeline, tmp_path, method, plain):
    student = prune(method, load_teacher(str(pipeline), "cpu").unet, sparsity=0.5)
    before = digest(pipeline)
    out = export_pipeline(student, pipeline, tmp_path / "exported")

    assert (plain_unet(student) is not None) is plain
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "text_encoder", "tokenizer",
                                                      "unet", "vae"]
    pipe = StableDiffusionPipeline.from_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == (["diffusers", "UNet2DConditionModel"] if plain
                             else ["raybilevel.export", "PrunedUNet2DConditionModel"])
    # The pipeline's UNet computes exactly what the student computes (magnitude: with its masks applied).
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500])
    text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, t, text).sample, student.model.eval()(x, t, text).sample)
    images = sample(pipe)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    # The student's samples differ from the teacher's at the same seed: the UNet really was swapped.
    assert not torch.equal(images, sample(StableDiffusionPipeline.from_pretrained(pipeline)))
    assert digest(pipeline) == before  # the teacher's folder is untouched


def test_export_replaces_an_older_export_and_leaves_no_temporary_folders(pipeline, tmp_path):
    teacher = load_teacher(str(pipeline), "cpu").unet
    export_pipeline(prune("channels", teacher, sparsity=0.5), pipeline, tmp_path / "exported")
    blocks = prune("blocks", teacher, sparsity=0.0)
    export_pipeline(blocks, pipeline, tmp_path / "exported")
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]
    unet = StableDiffusionPipeline.from_pretrained(tmp_path / "exported").unet
    assert unet.mid_block is None and unet.state_dict().keys() == blocks.model.state_dict().keys()


def _export_with_the_cli(pipeline: Path, tmp_path: Path, method: str, sparsity: float):
    save_student(prune(method, load_teacher(str(pipeline), "cpu").unet, sparsity=sparsity), tmp_path / "student")
    config = tmp_path / "sd.yaml"
    # The training run's config: export reads only world.pretrained from it.
    config.write_text(yaml.safe_dump({"world": {"kind": "diffusers", "pretrained": str(pipeline),
                                                "dataset": {"path": "/data/unused"}, "concept_prompts": "unused.txt"}}))
    result = subprocess.run(cli("export", "--config", str(config), "--student", str(tmp_path / "student"),
                                "--output", str(tmp_path / "exported")), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_cli_exports_a_saved_student(pipeline, tmp_path):
    result = _export_with_the_cli(pipeline, tmp_path, "blocks", 0.0)
    assert result.stdout.strip() == (f"wrote {tmp_path / 'exported'}: StableDiffusionPipeline.from_pretrained("
                                     f"{str(tmp_path / 'exported')!r}) samples from the student")
    assert (tmp_path / "exported" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_cli_export_of_a_toy_world_is_one_line_exit_2(tmp_path):
    result = subprocess.run(cli("export", "--student", str(tmp_path), "--output", str(tmp_path / "x")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "world.kind" in result.stderr and "diffusers" in result.stderr


_LOAD = "from diffusers import StableDiffusionPipeline; StableDiffusionPipeline.from_pretrained({!r})"


@pytest.mark.parametrize("prelude, loads", [("", False), ("import raybilevel.export; ", True)])
def test_a_channels_export_in_a_fresh_process_needs_the_import_and_says_so_in_one_line(pipeline, tmp_path,
                                                                                        prelude, loads):
    """Stock diffusers (0.42) never imports the module a folder names: a fresh process that has not imported
    raybilevel.export is refused with one line naming the fix; one that has loads the channels student."""
    out = export_pipeline(prune("channels", load_teacher(str(pipeline), "cpu").unet, sparsity=0.5), pipeline,
                          tmp_path / "exported")
    result = subprocess.run([sys.executable, "-c", prelude + _LOAD.format(str(out))], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    if loads:
        assert result.returncode == 0, result.stderr[-2000:]
        return
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("ValueError: raybilevel.export is not one of the libraries")
    assert last.endswith("import raybilevel.export before calling `from_pretrained`.")


def test_cli_export_of_a_channels_student_prints_the_import_it_needs(pipeline, tmp_path):
    result = _export_with_the_cli(pipeline, tmp_path, "channels", 0.5)
    assert result.stdout.strip() == (f"wrote {tmp_path / 'exported'}: import raybilevel.export; "
                                     f"StableDiffusionPipeline.from_pretrained({str(tmp_path / 'exported')!r}) "
                                     "samples from the student")
