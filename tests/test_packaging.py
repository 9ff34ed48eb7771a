"""A wheel (not an editable install) ships every file the CLI reads: spaces, prompt files, toy assets."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raybilevel"


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_the_package_has(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside pyproject.toml
    shutil.copytree(PACKAGE, source / "raybilevel", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PACKAGE.parent / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, timeout=600, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("raybilevel-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data = [p for folder in ("search_spaces", "worlds/toy/assets") for p in (PACKAGE / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.suffix == ".yaml" for p in data) and any(p.suffix == ".safetensors" for p in data)
    missing = sorted(str(p.relative_to(PACKAGE.parent)) for p in data
                     if str(p.relative_to(PACKAGE.parent)) not in shipped)
    assert not missing, f"package data left out of the wheel (pyproject's package-data): {missing}"
