"""The GPU-kit helpers under bench/ that run on the lent GPU machine, checked on the CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sglang_stubs_replace_the_deepseek_backends(tmp_path):
    attn = tmp_path / "sglang" / "srt" / "layers" / "attention"
    attn.mkdir(parents=True)
    (attn / "dsa_backend.py").write_text("import deep_gemm  # not carried\n")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("stand-in:") == 2
    assert (attn / "dsa_backend.py.orig").read_text() == "import deep_gemm  # not carried\n"
    for name, classes in (("dsa_backend", ["DeepseekSparseAttnBackend", "DeepseekSparseAttnMultiStepBackend"]),
                          ("deepseek_v4_backend", ["DeepseekV4AttnBackend", "DeepseekV4MultiStepBackend"])):
        mod = _load(attn / f"{name}.py")                  # imports with no DeepGEMM / CUTLASS present
        for c in classes:
            with pytest.raises(RuntimeError, match="not carried"):
                getattr(mod, c)(object())
    # idempotent: a second run keeps the original, not the stand-in, as .orig
    subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)], check=True,
                   capture_output=True)
    assert (attn / "dsa_backend.py.orig").read_text() == "import deep_gemm  # not carried\n"


def test_sglang_stubs_refuse_a_directory_without_sglang(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no SGLang attention package" in r.stderr


def test_gpu_jobs_parses_groups_and_refuses_bad_jobs():
    jobs = _load(REPO / "bench" / "gpu_jobs.py")
    total, groups = jobs.parse(["300", "vllm:--runner v2 --phases tiny", "sglang:--phases check", "then",
                                "sglang:--phases bench --bench-configs 'peagle-k*'"])
    assert total == 300.0
    assert groups == [[("j1-vllm", "vllm", ["--runner", "v2", "--phases", "tiny"]),
                       ("j2-sglang", "sglang", ["--phases", "check"])],
                      [("j3-sglang", "sglang", ["--phases", "bench", "--bench-configs", "peagle-k*"])]]
    for bad in (["300", "trtllm:--x"], ["300", "no-colon"], ["soon", "vllm:"]):
        with pytest.raises(SystemExit):
            jobs.parse(bad)


def test_gpu_jobs_runs_groups_kills_at_the_deadline_and_packs(tmp_path, monkeypatch):
    """Jobs of a group run at the same time, groups one after another; a job still running at the deadline is
    killed, and every job's directory is packed with its result JSON copied out."""
    import tarfile

    jobs = _load(REPO / "bench" / "gpu_jobs.py")
    fake = tmp_path / "fake_e2e.py"
    fake.write_text("import argparse, json, pathlib, time\n"
                    "ap = argparse.ArgumentParser(); ap.add_argument('--out'); ap.add_argument('--budget-s')\n"
                    "ap.add_argument('--sleep', type=float, default=0)\n"
                    "a = ap.parse_args(); time.sleep(a.sleep)\n"
                    "pathlib.Path(a.out, 'r.json').write_text(json.dumps({'budget': float(a.budget_s)}))\n"
                    "print('done', a.sleep)\n")
    monkeypatch.setattr(jobs, "SCRIPTS", {"vllm": ([str(fake)], "NOPE", "r.json", True),
                                          "sglang": ([str(fake)], "NOPE", "r.json", True),
                                          "selfcheck": ([str(fake)], "NOPE", "r.json", False)})
    monkeypatch.setattr(jobs, "WORK", tmp_path / "work")
    monkeypatch.setattr(jobs, "PACK_S", 0.0)
    monkeypatch.setattr(jobs, "MIN_START_S", 1.0)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    jobs.T0 = __import__("time").monotonic()
    assert jobs.main(["20", "vllm:--sleep 0", "sglang:--sleep 1", "selfcheck:--budget-s 7", "then",
                      "vllm:--sleep 600"]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["j1-vllm.json", "j2-sglang.json", "j3-selfcheck.json", "run.tgz"]
    assert 1 <= __import__("json").loads((out / "j1-vllm.json").read_text())["budget"] <= 20
    assert __import__("json").loads((out / "j3-selfcheck.json").read_text())["budget"] == 7   # no budget of its own
    with tarfile.open(out / "run.tgz") as t:
        names = t.getnames()
    assert "gpujobs/j4-vllm/run.log" in names and "gpujobs/j4-vllm/r.json" not in names   # killed, nothing written
