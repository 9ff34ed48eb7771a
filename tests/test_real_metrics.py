"""The real-model evaluation metrics: Inception FID, NudeNet counts, benchmark prompt files and CP, each
checked against a direct computation (FID with a scripted stand-in for the Inception network)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raybilevel.errors import ConfigError, UserError
from raybilevel.metrics import changed_prompt_share, frechet_distance
from raybilevel.worlds.datasets import to_uint8
from raybilevel.worlds.fid import (WEIGHTS_FILE, WEIGHTS_URL, InceptionFeatures, frechet_inception_distance,
                                   resize_clean)
from raybilevel.worlds.nudenet import EXPOSED_LABELS, NudeNetJudge, count_detections, to_bgr_arrays
from raybilevel.worlds.prompt_sets import load_prompt_set
from raybilevel.worlds.tiny_sd import build_tiny_inception


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    return build_tiny_inception(tmp_path_factory.mktemp("fid") / "tiny-inception.pt")


def images(n: int, seed: int, height: int = 20, width: int = 14) -> torch.Tensor:
    """Random images in [-1, 1], slightly past it so quantisation must clamp; not square, not 299 px."""
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2.1 - 1.05


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    return np.clip(np.round((pixels.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)


def pil_resize(batch: np.ndarray) -> np.ndarray:
    """clean-fid's clean resize written out: each uint8 channel as a float32 PIL image, bicubic to 299 px."""
    out = np.empty((len(batch), 3, 299, 299), dtype=np.float32)
    for i, image in enumerate(batch):
        for c, plane in enumerate(image):
            width, height = plane.shape[1], plane.shape[0]
            channel = Image.frombytes("F", (width, height), plane.astype(np.float32).tobytes())
            out[i, c] = np.clip(np.asarray(channel.resize((299, 299), Image.Resampling.BICUBIC)), 0, 255)
    return out


def direct_features(net_file: Path, pixels: torch.Tensor) -> torch.Tensor:
    net = torch.jit.load(str(net_file))
    with torch.no_grad():
        return net(torch.from_numpy(pil_resize(as_uint8(pixels))), return_features=True)


def test_fid_matches_a_direct_computation(inception):
    generated, reference = images(24, seed=0), images(20, seed=1) * 0.5
    features = InceptionFeatures(str(inception), batch_size=7)  # 24 = 3 * 7 + 3: a short last batch
    direct = frechet_distance(direct_features(inception, generated), direct_features(inception, reference))
    assert direct > 1e-3
    assert frechet_inception_distance(generated, reference, features) == pytest.approx(direct, rel=1e-6, abs=1e-9)
    assert features(generated).shape == (24, 16) and features(generated).dtype == torch.float64


def test_fid_agrees_with_torchmetrics(inception):
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Extractor(torch.nn.Module):
        num_features = 16  # tells torchmetrics the feature size without a trial call

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.jit.load(str(inception))

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return self.net(torch.from_numpy(pil_resize(batch.numpy())), return_features=True)

    generated, reference = images(40, seed=2), images(40, seed=3, height=16, width=16) * 0.7 + 0.1
    metric = FrechetInceptionDistance(feature=Extractor(), normalize=False)
    metric.update(torch.from_numpy(as_uint8(reference)), real=True)
    metric.update(torch.from_numpy(as_uint8(generated)), real=False)
    ours = frechet_inception_distance(generated, reference, InceptionFeatures(str(inception)))
    assert ours > 1e-3
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)


def test_identical_image_sets_have_zero_fid(inception):
    same = images(20, seed=4)
    fid = frechet_inception_distance(same, same.clone(), InceptionFeatures(str(inception)))
    assert fid == pytest.approx(0, abs=1e-6)


def test_clean_resize_is_pils_bicubic_on_a_known_image():
    rows, cols = np.meshgrid(np.arange(12), np.arange(9), indexing="ij")
    # a smooth ramp, a checkerboard (hard edges at both extremes: bicubic overshoots them) and a constant
    known = np.stack([rows * 10 + cols * 5 + 20, np.where((rows + cols) % 2, 255, 0), np.full((12, 9), 77)])
    known = known.astype(np.uint8)[None]
    resized = resize_clean(torch.from_numpy(known))
    assert resized.shape == (1, 3, 299, 299) and resized.dtype == torch.float32
    assert np.array_equal(resized.numpy(), pil_resize(known))
    assert resized[0, 1].min() == 0 and resized[0, 1].max() == 255  # the overshoot is clipped
    assert torch.all(resized[0, 2] == 77)
    # PIL's ordinary 8-bit RGB resize is the same filter, rounded: within 1 level on the smooth ramp. It also
    # clips between its two passes, which the float planes do not: on the checkerboard the two part ways.
    rgb = Image.fromarray(known[0].transpose(1, 2, 0)).resize((299, 299), Image.Resampling.BICUBIC)
    difference = np.abs(resized.numpy()[0] - np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
    assert difference[0].max() <= 1 and difference[2].max() == 0 and difference[1].max() > 10


def test_to_uint8_rounds_like_a_saved_png():
    pixels = torch.tensor([-1.2, -1.0, -0.999, 0.0, 0.5, 1.0, 1.3])
    # (x + 1) * 127.5 = -25.5, 0, 0.1275, 127.5, 191.25, 255, 293.25: rounded (half to even), then clamped
    assert to_uint8(pixels).tolist() == [0, 0, 0, 128, 191, 255, 255]


def test_fid_weights_errors_are_one_line_with_the_download(tmp_path, inception):
    with pytest.raises(ConfigError) as missing:
        InceptionFeatures(str(tmp_path / "nowhere.pt"))
    message = str(missing.value)
    assert "world.metrics.fid_weights" in message and WEIGHTS_FILE in message and WEIGHTS_URL in message
    assert "\n" not in message
    (tmp_path / "page.pt").write_text("<html>not a network</html>\n<body></body>")
    with pytest.raises(ConfigError, match="cannot load .* as TorchScript") as unreadable:
        InceptionFeatures(str(tmp_path / "page.pt"))
    assert "\n" not in str(unreadable.value) and WEIGHTS_URL in str(unreadable.value)
    with pytest.raises(UserError, match="at least 2 generated"):
        frechet_inception_distance(images(1, seed=0), images(5, seed=1), InceptionFeatures(str(inception)))



def test_count_detections_by_hand():
    box = [0, 0, 4, 4]
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": box},
         {"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": box},  # a second box: the image counts once
         {"class": "FACE_FEMALE", "score": 0.95, "box": box}],  # not an exposed label
        [{"class": "BELLY_EXPOSED", "score": 0.5, "box": box},  # not above the threshold
         {"class": "FEET_EXPOSED", "score": 0.51, "box": box}],
        [],
        [{"class": "ARMPITS_EXPOSED", "score": 0.7, "box": box},
         {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": box},
         {"class": "BUTTOCKS_COVERED", "score": 0.99, "box": box}],
    ]
    expected = {**dict.fromkeys(EXPOSED_LABELS, 0), "FEMALE_BREAST_EXPOSED": 2, "FEET_EXPOSED": 1, "ARMPITS_EXPOSED": 1}
    assert count_detections(detections) == {**expected, "nudenet_total": 4, "nudenet_image_share": 3 / 4}
    strict = count_detections(detections, threshold=0.65)  # keeps image 0's breast (0.9) and image 3's armpits
    assert (strict["FEMALE_BREAST_EXPOSED"], strict["nudenet_total"], strict["nudenet_image_share"]) == (1, 2, 0.5)
    feet = count_detections(detections, labels=("FEET_EXPOSED",))
    assert feet == {"FEET_EXPOSED": 1, "nudenet_total": 1, "nudenet_image_share": 1 / 4}
    with pytest.raises(ValueError, match="at least one image"):
        count_detections([])


def test_exposed_labels_are_nudenets_own():
    import nudenet.nudenet

    labels = vars(nudenet.nudenet)["__labels"]  # the detector's class list, indexed by its output
    assert sorted(EXPOSED_LABELS) == sorted(label for label in labels if label.endswith("_EXPOSED"))
    assert len(EXPOSED_LABELS) == 9


def test_arrays_reach_nudenet_like_the_saved_png(tmp_path):
    from nudenet.nudenet import _read_image

    pixels = images(1, seed=6, height=24, width=40)
    Image.fromarray(as_uint8(pixels)[0].transpose(1, 2, 0)).save(tmp_path / "image.png")
    from_file = _read_image(str(tmp_path / "image.png"))[0]  # the package's own path: cv2.imread, BGR
    array = to_bgr_arrays(pixels)[0]
    assert array.shape == (24, 40, 3) and array.dtype == np.uint8
    assert np.array_equal(_read_image(array)[0], from_file)
    rgb = np.ascontiguousarray(array[..., ::-1])
    assert not np.array_equal(_read_image(rgb)[0], from_file)  # the check tells the two orders apart


def test_nudenet_judge_on_generated_images():
    counts = NudeNetJudge()(images(3, seed=5, height=64, width=48))
    assert set(counts) == {*EXPOSED_LABELS, "nudenet_total", "nudenet_image_share"}
    assert all(type(counts[label]) is int and 0 <= counts[label] <= 3 for label in EXPOSED_LABELS)
    assert counts["nudenet_total"] == sum(counts[label] for label in EXPOSED_LABELS)
    assert 0 <= counts["nudenet_image_share"] <= 1


def test_missing_nudenet_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` fail
    with pytest.raises(UserError, match=r'pip install "raybilevel\[nsfw\]"') as error:
        NudeNetJudge()
    assert "\n" not in str(error.value)


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return str(path)


I2P_COLUMNS = ["prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage", "q16_percentage",
               "sd_safety_percentage", "prompt_toxicity", "lexica_url", "sd_seed", "sd_guidance_scale",
               "sd_image_width", "sd_image_height"]


def i2p_row(prompt: str, categories: str, seed: int, guidance: float) -> list:
    return [prompt, categories, 0, 50.0, 20.0, 10.0, 0.0, 0.1, "https://lexica.art/x", seed, guidance, 512, 512]


def test_plain_prompt_files(tmp_path):
    (tmp_path / "plain.txt").write_text("a red circle\n\n  a blue square  \n")
    text = load_prompt_set(str(tmp_path / "plain.txt"))
    assert (text.name, text.prompts, text.seeds, text.guidance, text.source) == (
        "plain", ["a red circle", "a blue square"], None, None, "txt")
    table = load_prompt_set(write_csv(tmp_path / "plain.csv", ["id", "prompt"], [[1, "a, comma"], [2, " "], [3, "b"]]))
    assert (table.prompts, table.seeds, table.source) == (["a, comma", "b"], None, "csv")


def test_i2p_prompt_set_keeps_seeds_and_filters_by_category(tmp_path):
    path = write_csv(tmp_path / "i2p.csv", I2P_COLUMNS, [
        i2p_row("first", "sexual", 2734971755, 7.0),
        i2p_row("second", "hate,harassment", 11, 12.5),
        i2p_row("third", "violence, Sexual", 5, 7.5),
        i2p_row("fourth", "sexual harassment", 6, 7.5),  # not a category of its own: no match for "sexual"
    ])
    everything = load_prompt_set(path)
    assert everything.source == "i2p" and everything.prompts == ["first", "second", "third", "fourth"]
    assert everything.seeds == [2734971755, 11, 5, 6] and everything.guidance == [7.0, 12.5, 7.5, 7.5]
    sexual = load_prompt_set(path, category="sexual")
    assert (sexual.name, sexual.prompts, sexual.seeds, sexual.guidance) == (
        "i2p/sexual", ["first", "third"], [2734971755, 5], [7.0, 7.5])
    assert load_prompt_set(path, fmt="csv").seeds is None  # an explicit format overrides detection


def test_mma_and_ring_a_bell_prompt_sets(tmp_path):
    mma = write_csv(tmp_path / "mma.csv", ["target_prompt", "adv_prompt", "sanitized_adv_prompt",
                                           "success_against_sanitization_defense", "clean_prompt"],
                    [["target one", "adv one ��,x", "adv one", True, "a dog"],
                     ["t2", "adv two", "a2", False, "a cat"]])
    assert (load_prompt_set(mma).prompts, load_prompt_set(mma).source) == (["adv one ��,x", "adv two"], "mma")
    ring = tmp_path / "Violence_eta_5.5_K_38.csv"
    # as released: a byte-order mark here would rename the first column; quoted prompts with "" and commas
    ring.write_bytes("\ufeffprompt,case_number,evaluation_seed\n"
                     'gun bleeds ,0,41\n"""quoted"" , with comma ",1,14\n'.encode() + b"bad \xff byte ,2,58\n")
    loaded = load_prompt_set(str(ring))
    assert loaded.source == "ring-a-bell" and loaded.seeds == [41, 14, 58] and loaded.guidance is None
    assert loaded.prompts == ["gun bleeds", '"quoted" , with comma', "bad \ufffd byte"]


def test_prompt_set_errors_name_the_field_and_columns(tmp_path):
    def fails(match: str, path: str, **kwargs) -> None:
        with pytest.raises(ConfigError, match=match) as error:
            load_prompt_set(path, **kwargs)
        assert "world.metrics.prompt_sets" in str(error.value) and "\n" not in str(error.value)

    fails("no .txt or .csv file", str(tmp_path / "missing.csv"))
    (tmp_path / "prompts.json").write_text("[]")
    fails("no .txt or .csv file", str(tmp_path / "prompts.json"))
    unknown = write_csv(tmp_path / "unknown.csv", ["text", "seed"], [["x", 1]])
    fails("no recognised prompt column; its columns: text, seed", unknown)
    ring = write_csv(tmp_path / "ring.csv", ["prompt", "case_number", "evaluation_seed"], [["x", 0, "seven"]])
    fails("evaluation_seed is 'seven', not an integer", ring)
    fails("lacks sd_seed, sd_guidance_scale, categories for format 'i2p'; its columns: prompt, case_number", ring,
          fmt="i2p")
    # A set without categories (Ring-A-Bell, MMA-Diffusion) is read whole under a category, named as itself.
    whole = write_csv(tmp_path / "ring_ok.csv", ["prompt", "case_number", "evaluation_seed"], [["x", 0, 3], ["y", 1, 4]])
    read = load_prompt_set(str(whole), category="sexual")
    assert read.prompts == ["x", "y"] and read.name == "ring_ok"
    i2p = write_csv(tmp_path / "i2p.csv", I2P_COLUMNS, [i2p_row("x", "hate", 1, 7.5)])
    fails("holds no prompts in category 'sexual'", i2p, category="sexual")
    fails("unknown prompt-set format 'parquet'", i2p, fmt="parquet")
    (tmp_path / "plain.txt").write_text("x\n")
    fails("format 'mma' needs a .csv", str(tmp_path / "plain.txt"), fmt="mma")


def test_changed_prompt_share_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(0, 12, (90,), generator=gen) * 7 + 3  # ids need not be 0..n-1
    teacher = torch.rand(90, generator=gen) * 40
    student = teacher + torch.randn(90, generator=gen) * 8 - 1
    fell = 0
    for prompt in set(prompt_ids.tolist()):
        rows = [i for i in range(90) if prompt_ids[i] == prompt]
        fell += sum(float(student[i]) for i in rows) / len(rows) < sum(float(teacher[i]) for i in rows) / len(rows)
    direct = fell / len(set(prompt_ids.tolist()))
    assert 0 < direct < 1
    assert changed_prompt_share(student, teacher, prompt_ids) == pytest.approx(direct)
    assert changed_prompt_share(teacher, teacher.clone(), prompt_ids) == 0.0  # an unchanged student
    assert changed_prompt_share(teacher - 1, teacher, prompt_ids) == 1.0
    with pytest.raises(ValueError, match="three"):
        changed_prompt_share(student, teacher[:-1], prompt_ids)
