#!/usr/bin/env python3
"""Make pedagle importable on a machine where it cannot be pip-installed (the lent H200: no network, no
setuptools build of the dynamic version): a site directory of symlinks to this checkout's packages, named
as pyproject.toml maps them, plus a dist-info carrying the version and the entry points (``pedagle.backends``,
``vllm.general_plugins``, ``sglang.srt.plugins``, the ``pedagle`` script), which is what the engines'
plugin discovery reads.

    python3 bench/gpu_site.py /tmp/site-pedagle      # then PYTHONPATH=/tmp/site-pedagle:...
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(dst: Path, src: Path = ROOT) -> Path:
    proj = tomllib.loads((src / "pyproject.toml").read_text())
    p, st = proj["project"], proj["tool"]["setuptools"]
    version = re.search(r'^__version__\s*=\s*"([^"]+)"', (src / "pedagle_core" / "__init__.py").read_text(), re.M)
    if version is None:
        raise SystemExit("pedagle_core/__init__.py has no __version__")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    tops = sorted({name.split(".")[0] for name in st["packages"]})
    for top in tops:
        (dst / top).symlink_to(src / st.get("package-dir", {}).get(top, top), target_is_directory=True)
    di = dst / f"{p['name']}-{version.group(1)}.dist-info"
    di.mkdir()
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {p['name']}\nVersion: {version.group(1)}\n")
    lines: list[str] = []
    for group, eps in p.get("entry-points", {}).items():
        lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()] + [""]
    if p.get("scripts"):
        lines += ["[console_scripts]"] + [f"{k} = {v}" for k, v in p["scripts"].items()] + [""]
    (di / "entry_points.txt").write_text("\n".join(lines))
    (di / "top_level.txt").write_text("\n".join(tops) + "\n")
    (di / "RECORD").write_text("")
    return di


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/site-pedagle")))
