"""Build hook: the wheel carries the repository's data that the CLI's defaults read.

``configs/`` (fleets, device classes, category maps, the synthetic example table) and the
committed MMLU table (``benchmarks/results/mmlu/calibration.npz`` with its samples) are copied
into ``edge_moe/_data/`` of a built wheel, so an installed ``edge-moe`` runs the small demo and
``plan`` from any folder (:mod:`edge_moe.paths` reads the checkout's folders when it runs from
one, the packaged copies otherwise). Editable installs read the checkout and copy nothing.
Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = {  # folder in the wheel (under edge_moe/_data) → (source folder, files kept)
    "configs": (ROOT / "configs", ("*.yaml", "example/*")),
    "mmlu": (ROOT / "benchmarks" / "results" / "mmlu", ("calibration.npz", "work/samples.jsonl")),
}


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name, (src, patterns) in DATA.items():
            dst = Path(self.build_lib) / "edge_moe" / "_data" / name
            for pattern in patterns:
                for f in src.glob(pattern):
                    if f.is_file():
                        (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, dst / f.relative_to(src))


setup(cmdclass={"build_py": BuildWithData})
