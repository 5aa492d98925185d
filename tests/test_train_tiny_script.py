"""scripts/train_tiny_drafters.py: the extra training prompts drawn from the target's own training files."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from helpers_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "models" / "tiny-code" / "target"


def _script():
    return load_script("scripts/train_tiny_drafters.py")


def _fake_target(tmp_path: Path, version: str) -> tuple[Path, Path]:
    """A target dir with the real tiny tokenizer and a data split over a small fake stdlib."""
    lib = tmp_path / "lib"
    lib.mkdir()
    body = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * {i}\n\n" for i in range(60))
    for name in ("a.py", "b.py", "held.py"):
        (lib / name).write_text(f"# {name}\n" + body.replace("f", name[0] + "f"))
    t = tmp_path / "target"
    t.mkdir()
    (t / "tokenizer.json").write_bytes((TARGET / "tokenizer.json").read_bytes())
    (t / "data_split.json").write_text(json.dumps({"python_version": version, "stdlib_root": str(lib),
                                                   "train": ["a.py", "b.py"], "heldout": ["held.py"]}))
    old = tmp_path / "train_prompts.jsonl"
    old.write_text(json.dumps({"prompt": "def x():\n    pass\n", "file": "a.py"}) + "\n")
    return t, old


def test_extra_prompts_keep_the_old_ones_and_only_use_training_files(tmp_path):
    mod = _script()
    t, old = _fake_target(tmp_path, platform.python_version())
    out = Path(mod.extra_prompts(t, str(old), 20, 7, tmp_path / "w" / "plus.jsonl"))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[0]["prompt"] == "def x():\n    pass\n" and len(recs) == 21
    assert {r["file"] for r in recs[1:]} <= {"a.py", "b.py"}
    assert len({r["prompt"] for r in recs}) == 21                        # no duplicates
    again = Path(mod.extra_prompts(t, str(old), 20, 7, tmp_path / "w2" / "plus.jsonl"))
    assert again.read_text() == out.read_text()                          # seeded


def test_extra_prompts_refuse_another_python(tmp_path):
    mod = _script()
    t, old = _fake_target(tmp_path, "2.7.18")
    with pytest.raises(SystemExit, match=r"data_split.json: field 'python_version' = 2.7.18"):
        mod.extra_prompts(t, str(old), 5, 0, tmp_path / "plus.jsonl")
