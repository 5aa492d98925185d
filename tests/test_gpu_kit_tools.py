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


def _fake_both_kit(root: Path) -> Path:
    """A kit directory shaped like ../shared/gpu-carry's `both` (members 1x: vLLM, 2x: SGLang), in 3 pieces."""
    import hashlib
    import os
    import tarfile

    members = {"10-vllm.tar.xz": os.urandom(3000), "11-vllm-deps.tar.xz": os.urandom(2000),
               "20-sglang.tar.xz": os.urandom(2500), "22-sglang-deps.tar.xz": os.urandom(1500)}
    src = root / "members"
    src.mkdir()
    for name, data in members.items():
        (src / name).write_bytes(data)
    (src / "CONTENTS.sha256").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members.items()))
    kit = root / "both"
    (kit / "bin").mkdir(parents=True)
    (kit / "bin" / "gpu_assemble.sh").write_text("echo stash from $0\n")
    with tarfile.open(root / "bundle.tar", "w") as t:
        for p in sorted(src.iterdir()):
            t.add(p, arcname="./" + p.name)
    data = (root / "bundle.tar").read_bytes()
    (kit / "bin" / "BUNDLE.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  bundle.tar\n")
    n = (len(data) + 2) // 3
    for i in range(3):
        (kit / f"p{i:02d}").mkdir()
        (kit / f"p{i:02d}" / f"bundle.tar.{i:02d}").write_bytes(data[i * n:(i + 1) * n])
    return kit


def test_gpu_kit_subset_keeps_one_engine_in_verified_pieces(tmp_path):
    """bench/gpu_kit_subset.sh: the SGLang members only (and their checksum lines), in the asked number of pieces
    whose join matches BUNDLE.sha256; bad arguments are refused with the reason."""
    import hashlib
    import io
    import tarfile

    kit = _fake_both_kit(tmp_path)
    script = REPO / "bench" / "gpu_kit_subset.sh"
    r = subprocess.run(["bash", str(script), str(kit), str(tmp_path / "sg"), "sglang", "2"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "sg"
    assert (out / "bin" / "OPTION").read_text().strip() == "sglang"
    pieces = sorted(out.glob("p[0-9][0-9]/bundle.tar.[0-9][0-9]"))
    assert [p.parent.name for p in pieces] == ["p00", "p01"]
    data = b"".join(p.read_bytes() for p in pieces)
    assert (out / "bin" / "BUNDLE.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    piece_sums = dict(line.split()[::-1] for line in (out / "bin" / "PIECES.sha256").read_text().splitlines())
    assert piece_sums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pieces}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = sorted(m.name.removeprefix("./") for m in t.getmembers() if m.isfile())
        contents = t.extractfile([m for m in t.getmembers() if m.name.endswith("CONTENTS.sha256")][0]).read().decode()
    assert names == ["20-sglang.tar.xz", "22-sglang-deps.tar.xz", "CONTENTS.sha256"]
    assert [line.split()[1] for line in contents.splitlines()] == ["20-sglang.tar.xz", "22-sglang-deps.tar.xz"]
    for args, msg in (([str(kit), str(out), "sglang"], "exists"),
                      ([str(kit), str(tmp_path / "o"), "trtllm"], "expected sglang or vllm"),
                      ([str(tmp_path), str(tmp_path / "o2"), "vllm"], "not a kit directory")):
        r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
        assert r.returncode != 0 and msg in r.stderr
    (kit / "p01" / "bundle.tar.01").write_bytes(b"corrupt")
    r = subprocess.run(["bash", str(script), str(kit), str(tmp_path / "o3"), "vllm"], capture_output=True, text=True)
    assert r.returncode != 0 and "bundle checksum mismatch" in r.stderr


def test_gpu_run_stash_finds_a_kit_carried_under_its_name(tmp_path):
    """bench/gpu_run.sh stash runs the carried kit's gpu_assemble.sh, whether the kit is .gpucarry/{bin,pNN} or
    .gpucarry/NAME/{bin,pNN}."""
    import shutil

    for layout in (".gpucarry", ".gpucarry/sglang"):
        repo = tmp_path / layout.replace("/", "_")
        (repo / "bench").mkdir(parents=True)
        shutil.copy(REPO / "bench" / "gpu_run.sh", repo / "bench")
        (repo / layout / "bin").mkdir(parents=True)
        (repo / layout / "p00").mkdir()
        (repo / layout / "bin" / "gpu_assemble.sh").write_text('echo "assemble $1 from $(dirname $0)"\n')
        r = subprocess.run(["bash", "bench/gpu_run.sh", "stash"], cwd=repo, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == f"assemble stash from {layout}/bin", (layout, r.stdout, r.stderr)


def test_gpu_h2src_overlays_heads_version_of_edited_files(tmp_path):
    """bench/gpu_h2src.sh: HEAD's copy of each tracked file edited in the working tree, and HEAD's id."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(REPO / "bench" / "gpu_h2src.sh", repo / "bench")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "a.py").write_text("A = 1\n")
    (repo / "b.txt").write_text("b\n")
    (repo / ".gitignore").write_text("/.h2src/\n")
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True).stdout  # noqa: E731
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (repo / "pkg" / "a.py").write_text("A = 2\n")                  # edited after the commit
    (repo / "new.py").write_text("untracked\n")
    r = subprocess.run(["bash", "bench/gpu_h2src.sh"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (repo / ".h2src" / "overlay" / "pkg" / "a.py").read_text() == "A = 1\n"
    assert not (repo / ".h2src" / "overlay" / "b.txt").exists()
    assert (repo / ".h2src" / "COMMIT").read_text().strip() == git("rev-parse", "HEAD").strip()
    assert "overlay: 1 file(s)" in r.stdout and "new.py" in r.stdout
    (repo / ".gitignore").write_text("")
    r = subprocess.run(["bash", "bench/gpu_h2src.sh"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 2 and "not git-ignored" in r.stderr
