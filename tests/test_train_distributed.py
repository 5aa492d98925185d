"""Two processes launched by torchrun: DDP and FSDP2 runs equal a single-process run with ``--grad-accum 2``
on the same data (float64: every parameter within 1e-10), and the metrics too. On CPU with gloo (CI); on
a machine with two or more GPUs also on CUDA with NCCL (the dense-mask attention: FlexAttention has no
float64)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_trainer import make_toy_target, toy_config  # noqa: E402

from pedagle_core.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.device_count() >= 2 else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: int = 240) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "pedagle_core.train.cli", "train", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]


def _state(out: Path) -> dict:
    ck = sorted((out / "train" / "checkpoints").glob("step-*"))[-1]
    return torch.load(ck / "train_state.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dist")
    target = make_toy_target(root / "target", n_prompts=16)
    cache = root / "cache"
    train(toy_config(target, root / "prep", cache_dir=str(cache), prepare_only=True))
    refs = {}
    for device in DEVICES:
        for kind, kw in (("peagle", dict(segments=2)), ("ttt", dict(mode="autoregressive", ttt_steps=3))):
            single = root / f"single-{kind}-{device}"
            train(toy_config(target, single, cache_dir=str(cache), steps=3, dtype="fp64", grad_accum=2,
                             device=device, attention="sdpa", **kw))
            refs[kind, device] = (_state(single), single)
    yield target, cache, root, refs
    torch.set_num_threads(old)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,kind", [("ddp", "peagle"), ("fsdp", "peagle"), ("fsdp", "ttt")])
def test_two_process_equals_grad_accum(prepared, mode, kind, device):
    """P-EAGLE with 2 segments (DDP, FSDP2) and EAGLE-3 with 3 test-time-training steps (FSDP2)."""
    target, cache, root, refs = prepared
    ref, single = refs[kind, device]
    out = root / f"{mode}-{kind}-{device}"
    extra = (["--depth", "4", "--segments", "2"] if kind == "peagle"
             else ["--mode", "autoregressive", "--ttt-steps", "3"])
    _torchrun(["--target", str(target), "--out", str(out), "--cache-dir", str(cache), *extra,
               "--layers", "1", "--steps", "3", "--lr", "3e-3", "--seq-len", "64", "--dtype", "fp64",
               "--device", device, "--attention", "sdpa", "--aux-layers", "1,2,3", "--draft-vocab", "48",
               "--no-progress", "--warmup-steps", "0", "--distributed", mode])
    got = _state(out)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-10, msg=f"{mode}: {k}")
    m = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    r = [json.loads(x) for x in (single / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in m if "loss" in x]
    assert len(losses) == 3 and losses == pytest.approx([x["loss"] for x in r if "loss" in x], rel=1e-10)
    start = [x for x in m if x.get("event") == "start"][0]
    assert start["world_size"] == 2 and start["distributed"] == mode
    from pedagle_core.formats import load_drafter
    assert load_drafter(out).config.parallel_depth == (4 if kind == "peagle" else 1)
