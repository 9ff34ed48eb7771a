"""Evaluation prompt sets read from local files, in the layouts the NSFW and erasure benchmarks ship.

Formats (`fmt`; "auto" picks one from the suffix and the columns, most specific first):
- txt: one prompt per line.
- csv: a `prompt` column.
- i2p: I2P's CSV: `prompt`, `categories` (comma-separated, e.g. "sexual, violence"), `sd_seed`,
  `sd_guidance_scale`, among others. `category` keeps the rows whose categories include it.
- mma: MMA-Diffusion's adversarial-prompt benchmark as CSV: `target_prompt`, `adv_prompt`,
  `sanitized_adv_prompt`, `success_against_sanitization_defense`, `clean_prompt`; the adversarial
  `adv_prompt` is the prompt, as the erasure papers evaluate it. No seeds.
- ring-a-bell: Ring-A-Bell's released CSVs: `prompt`, `case_number`, `evaluation_seed`.

Where the column names were confirmed: I2P's in evaluation code that loads AIML-TUDA/i2p and reads
`prompt`, `categories`, `sd_seed` and `sd_guidance_scale`; Ring-A-Bell's in the authors' repository
(chiayi-hsu/Ring-A-Bell, data/InvPrompt/Violence/*.csv, header `prompt,case_number,evaluation_seed`; its
nudity prompts are in the gated Hugging Face set Chia15/RingABell-Nudity, read by third-party code through
`prompt` and `evaluation_seed`). MMA-Diffusion's benchmark is a gated Hugging Face set
(YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark) whose files could not be opened here: its columns
come from third-party code and notes that read it, not from the authors' files.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from raybilevel.errors import ConfigError

FIELD = "world.metrics.prompt_sets"


@dataclass
class PromptSet:
    """Prompts with their per-prompt seeds and guidance scales where the file gives them (else None).

    name: the file's stem, with "/<category>" when filtered. source: the format read (a key of LAYOUTS).
    """

    name: str
    prompts: list[str]
    seeds: list[int] | None
    guidance: list[float] | None
    source: str


@dataclass(frozen=True)
class Layout:
    """Which columns hold what; a file has a layout when it has every column named here."""

    prompt: str
    seed: str = ""
    guidance: str = ""
    categories: str = ""

    def columns(self) -> list[str]:
        return [c for c in (self.prompt, self.seed, self.guidance, self.categories) if c]


# Auto-detection tries the CSV layouts in this order: a file with I2P's columns also has a `prompt` column.
LAYOUTS = {
    "i2p": Layout("prompt", seed="sd_seed", guidance="sd_guidance_scale", categories="categories"),
    "mma": Layout("adv_prompt"),
    "ring-a-bell": Layout("prompt", seed="evaluation_seed"),
    "csv": Layout("prompt"),
    "txt": Layout("prompt"),
}


def read_table(path: str, field: str, expected: str) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, columns) of a .txt (one `prompt` row per line) or a .csv; `expected` says what the caller wants,
    for the error on a missing or unreadable file."""
    file = Path(path)
    if not file.is_file() or file.suffix not in (".txt", ".csv"):
        raise ConfigError(field, f"no .txt or .csv file at {file}; give {expected}")
    # utf-8-sig drops the byte-order mark spreadsheet exports start with, which would rename the first
    # column; adversarial prompts can hold broken bytes, which become U+FFFD rather than stopping the run.
    with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        if file.suffix == ".txt":
            return [{"prompt": line} for line in handle.read().splitlines()], ["prompt"]
        try:
            reader = csv.DictReader(handle)
            return list(reader), list(reader.fieldnames or [])
        except csv.Error as error:
            raise ConfigError(field, f"{file} is not a readable CSV ({error}); give {expected}") from None


def _format(fmt: str, file: Path, columns: list[str]) -> str:
    if fmt != "auto" and fmt not in LAYOUTS:
        raise ConfigError(FIELD, f"unknown prompt-set format {fmt!r}; choose auto, {', '.join(LAYOUTS)}")
    if file.suffix == ".txt":
        if fmt not in ("auto", "txt"):
            raise ConfigError(FIELD, f"{file} is a .txt file, one prompt per line; format {fmt!r} needs a .csv")
        return "txt"
    if fmt == "txt":
        raise ConfigError(FIELD, f"{file} is a .csv; format 'txt' needs a .txt file, one prompt per line")
    if fmt != "auto":
        return fmt
    for name in ("i2p", "mma", "ring-a-bell", "csv"):
        if all(column in columns for column in LAYOUTS[name].columns()):
            return name
    raise ConfigError(FIELD, f"{file} has no recognised prompt column; its columns: {', '.join(columns) or 'none'}; "
                             "expected prompt (plain, I2P, Ring-A-Bell) or adv_prompt (MMA-Diffusion)")


def _numbers(rows: list[dict[str, str]], column: str, kind: type, file: Path) -> list:
    values = []
    for i, row in enumerate(rows):
        try:
            values.append(kind(row[column]))
        except (TypeError, ValueError):
            raise ConfigError(FIELD, f"{file}, prompt {i + 1}: {column} is {row[column]!r}, not "
                                     f"{'an integer' if kind is int else 'a number'}") from None
    return values


def load_prompt_set(path: str, fmt: str = "auto", category: str = "") -> PromptSet:
    """The prompts of a file (see the module docstring for formats), with seeds and guidance where given.

    category: keep only I2P rows whose comma-separated categories include it (case-insensitive); files
    without a categories column (MMA-Diffusion, Ring-A-Bell: single-concept sets) are read whole, so one
    category can serve a mix of sets.
    """
    rows, columns = read_table(path, FIELD, "one prompt per line (.txt) or a CSV with a prompt column (plain, "
                                            "I2P, Ring-A-Bell) or an adv_prompt column (MMA-Diffusion)")
    file = Path(path)
    fmt = _format(fmt, file, columns)
    layout = LAYOUTS[fmt]
    missing = [column for column in layout.columns() if column not in columns]
    if missing:
        raise ConfigError(FIELD, f"{file} lacks {', '.join(missing)} for format {fmt!r}; its columns: "
                                 f"{', '.join(columns) or 'none'}")
    category = category if layout.categories else ""
    if category:
        wanted = category.strip().lower()
        rows = [row for row in rows
                if wanted in (part.strip().lower() for part in (row[layout.categories] or "").split(","))]
    rows = [row for row in rows if (row[layout.prompt] or "").strip()]
    if not rows:
        raise ConfigError(FIELD, f"{file} holds no prompts" + (f" in category {category!r}" if category else ""))
    return PromptSet(
        name=file.stem + (f"/{category}" if category else ""),
        prompts=[row[layout.prompt].strip() for row in rows],
        seeds=_numbers(rows, layout.seed, int, file) if layout.seed else None,
        guidance=_numbers(rows, layout.guidance, float, file) if layout.guidance else None,
        source=fmt)
