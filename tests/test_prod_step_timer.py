"""Issue 23's production-shaped run without a GPU: the core draft-step timer (`pedagle_core.engine.step_timer`,
host-time path), the vLLM hook (`pedagle_backends.vllm.step_timer`) on a fake V2 speculator and a fake
speculator factory package, the shared prod pieces (bench/prod_shapes.py: shapes, a dry write read back by the
strict loader, the comparison), and bench/vllm_gpu_e2e.py's prod phase planned and run with fake children."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import prod_shapes as ps  # noqa: E402
import vllm_gpu_e2e as ve  # noqa: E402

from pedagle_backends.vllm import step_timer as vst  # noqa: E402
from pedagle_core.engine import step_timer as core  # noqa: E402


# ---------------------------------------------------------------------------------------------- core timer
def test_core_timer_host_path(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    env = "PEDAGLE_TEST_TIME_X"
    monkeypatch.delenv(env, raising=False)
    assert core.timer_for(env) is None
    calls = []

    def step(x, skip=False):
        calls.append(x)
        return x + 1

    wrapped = core.timed(step, lambda: core.timer_for(env),
                         lambda args, kwargs: None if kwargs.get("skip") else {"kind": "k", "B": args[0]})
    assert core.timed(wrapped, lambda: None, lambda a, k: {}) is wrapped          # idempotent
    assert wrapped(1) == 2                                                        # no variable: not timed
    monkeypatch.setenv(env, str(path))
    assert wrapped(3) == 4 and wrapped(5, skip=True) == 6 and calls == [1, 3, 5]
    t = core.timer_for(env)
    assert t is core.timer_for(env)
    with t.step(kind="ctx") as info:
        info["B"] = 9
    t.close()
    t.close()                                                                     # twice: no error
    rows = core.read(str(path))
    assert [(r["kind"], r["B"]) for r in rows] == [("k", 3), ("ctx", 9)]
    assert all(r["gpu_ms"] is None and r["cpu_ms"] >= 0 and r["t"] > 0 for r in rows)
    core._TIMERS.pop(str(path), None)


# ---------------------------------------------------------------------------------------------- vLLM hook
class FakeBatch:
    def __init__(self, num_reqs, num_tokens):
        self.num_reqs, self.num_tokens = num_reqs, num_tokens


class FakeSpeculator:
    K = 7

    def propose(self, input_batch, *args, dummy_run=False, **kwargs):
        return torch.zeros(input_batch.num_reqs, self.K, dtype=torch.long)


def test_vllm_hook_times_propose(tmp_path, monkeypatch):
    path = tmp_path / "v.jsonl"
    monkeypatch.setenv(vst.TIME_ENV, str(path))
    spec = vst.time_speculator(FakeSpeculator())
    assert vst.time_speculator(spec) is spec and getattr(spec.propose, core.TIMED_MARK)
    assert spec.propose(FakeBatch(8, 64), None).shape == (8, 7)                   # decode: 8 x (K+1) rows
    spec.propose(FakeBatch(8, 4096), None)                                        # prefill rows in the batch
    spec.propose(input_batch=FakeBatch(1, 8))
    spec.propose(FakeBatch(8, 64), dummy_run=True)                                # not timed
    vst.timer().close()
    rows = vst.read(str(path))
    assert [(r["B"], r["T"], r["K"], r["uniform"]) for r in rows] == [(8, 64, 7, True), (8, 4096, 7, False),
                                                                       (1, 8, 7, True)]
    assert all(r["kind"] == "propose" and r["gpu_ms"] is None for r in rows)
    assert [ve.prod_keep(r) for r in rows] == [True, False, True]
    core._TIMERS.pop(str(path), None)


def test_v2_factory_times_every_speculator_it_builds(tmp_path, monkeypatch):
    """`v2_patch`'s wrapper of V2's speculator factory passes what it builds to the timer when asked
    (``time_draft``, set by ``PEDAGLE_VLLM_TIME_DRAFT`` at install), and leaves it alone otherwise."""
    from pedagle_backends.vllm import v2_patch

    orig = lambda vllm_config, device, *a, **k: FakeSpeculator()            # noqa: E731
    ar = types.SimpleNamespace(speculative_config=types.SimpleNamespace(method="eagle3", parallel_drafting=False))
    plain = v2_patch._wrapped_factory(orig, serve_peagle=False, record_path=None)
    assert not getattr(plain(ar, "cpu").propose, core.TIMED_MARK, False)
    f = v2_patch._wrapped_factory(orig, serve_peagle=False, record_path=None, time_draft=True)
    assert getattr(f, "__pedagle_v2_hook__") is True and f.__wrapped__ is orig   # v2_state.is_installed holds
    monkeypatch.setenv(vst.TIME_ENV, str(tmp_path / "f.jsonl"))
    s = f(ar, "cpu")
    assert getattr(s.propose, core.TIMED_MARK)
    s.propose(FakeBatch(2, 16))
    vst.timer().close()
    assert [r["B"] for r in vst.read(str(tmp_path / "f.jsonl"))] == [2]
    core._TIMERS.pop(str(tmp_path / "f.jsonl"), None)


# ---------------------------------------------------------------------------------------------- prod_shapes
def test_prod_shapes_configs_and_dry_models(tmp_path):
    from bench_drafter import DRY_FAMILIES, PARALLEL_LAYERS

    from pedagle_core.formats.load import load_drafter

    full = ps.prod_target_config(dry=False)
    assert (full["hidden_size"], full["num_attention_heads"], full["num_key_value_heads"], full["head_dim"],
            full["vocab_size"], full["num_hidden_layers"]) == (2048, 32, 4, 128, 151936, 48)
    assert ps.prod_aux_layer_ids(48) == (2, 24, 45)
    tdir, hdir = ps.write_prod_models(tmp_path, dry=True)
    assert (tdir, hdir) == (tmp_path / "prod-target", tmp_path / "prod-peagle")
    t = json.loads((tdir / "config.json").read_text())
    assert t["hidden_size"] == DRY_FAMILIES[ps.PROD_FAMILY]["target_hidden_size"] and not list(tdir.glob("*.safetensors"))
    d = load_drafter(hdir, dtype=torch.bfloat16, mode="parallel")                  # strict
    assert d.config.num_hidden_layers == PARALLEL_LAYERS and d.config.aux_layer_ids == ps.prod_aux_layer_ids(8)
    cmd = ps.standalone_command(Path("/o"), 512, 7, (1, 8), dry=False, budget_s=64)
    assert cmd[cmd.index("--batches") + 1] == "1,8" and cmd[cmd.index("--budget-s") + 1] == "64"
    assert "--dry-run" not in cmd and cmd[cmd.index("--paths") + 1] == "new"


def test_prod_compare_keeps_decode_lines():
    calls = [{"name": "b8", "i": 0, "batch": 8, "seconds": 1.0, "t0": 10.0, "t1": 11.0},
             {"name": "b8", "i": 1, "batch": 8, "seconds": 1.0, "t0": 12.0, "t1": 13.0}]
    timer = [{"t": 12.1, "B": 8, "uniform": False, "gpu_ms": 5.0, "cpu_ms": 1.0},
             {"t": 12.5, "B": 8, "uniform": True, "gpu_ms": 0.9, "cpu_ms": 0.2},
             {"t": 12.6, "B": 8, "uniform": True, "gpu_ms": 1.1, "cpu_ms": 0.2}]
    sa = {"results": [{"family": ps.PROD_FAMILY, "mode": "parallel", "B": 8, "K": 7, "ctx": 512, "median_ms": 0.8}]}
    inside = {"calls": calls, "timer": timer, "error": "exit timeout"}              # partial results still count
    cmp = ps.prod_compare(inside, sa, 7, 512, (1, 8), keep=ve.prod_keep)
    assert cmp["8"]["inside_ms"] == pytest.approx(1.0) and cmp["8"]["ratio"] == pytest.approx(1.25)
    assert cmp["1"]["inside_ms"] is None and cmp["8"]["goal"] == "ratio <= 1.1"
    assert ps.prod_compare(inside, sa, 7, 512, (8,))["8"]["inside_ms"] == pytest.approx(1.1)   # prefill kept
    table = ps.prod_table(cmp, 7, 512, "vLLM (V2)")
    assert "prod B=8 K=7 ctx=512: draft step inside vLLM (V2) 1.000 ms" in table and "ratio nan" in table


# ---------------------------------------------------------------------------------------------- vLLM prod phase
def test_vllm_prod_child_spec(tmp_path):
    tdir, hdir = ps.write_prod_models(tmp_path / "heads", dry=True)
    spec = ve.prod_child_spec(tmp_path, tdir, hdir, ctx=512, tokens=64)
    kw = spec["kwargs"]
    assert kw["model"] == str(tdir) and kw["load_format"] == "dummy" and kw["dtype"] == "bfloat16"
    assert kw["speculative_config"] == {"method": "eagle3", "model": str(hdir), "num_speculative_tokens": 7,
                                        "parallel_drafting": True}
    assert kw["max_model_len"] == 512 + 64 + 64 and kw["max_num_seqs"] == 8 and kw["skip_tokenizer_init"]
    assert kw["gpu_memory_utilization"] == 0.5 and kw["kv_cache_memory_bytes"] == 2 << 30
    assert [(c["name"], len(c["prompts"]), c["repeat"], c["max_tokens"]) for c in spec["calls"]] == \
        [("b1", 1, 4, 64), ("b8", 8, 4, 64)]                                       # 1 warm-up + 3 timed
    assert {len(p) for c in spec["calls"] for p in c["prompts"]} == {512}
    assert spec["calls"][1]["prompts"][0] == spec["calls"][0]["prompts"][0]
    json.dumps(spec)


def test_vllm_prod_phase_with_fake_children(tmp_path, monkeypatch):
    seen = {}

    def fake_child(spec, logf, timeout):
        seen["spec"], seen["timeout"] = spec, timeout
        now = time.time()
        calls = [{"name": f"b{b}", "i": i, "batch": b, "seconds": 0.5, "t0": now + 10 * b + i, "t1": now + 10 * b + i + 0.5}
                 for b in (1, 8) for i in range(4)]
        timer = [{"t": c["t0"] + 0.1, "B": c["batch"], "uniform": True, "gpu_ms": 0.5 * c["batch"] ** 0.5,
                  "cpu_ms": 0.1} for c in calls]
        return {"calls": calls, "timer": timer, "init_s": 1.0, "exit": 0, "drafter_weights": "from checkpoint"}

    def fake_standalone(out, ctx, K, batches, dry, timeout, logf):
        seen["sa"] = (ctx, K, tuple(batches), dry, timeout)
        return ({"results": [{"family": ps.PROD_FAMILY, "mode": "parallel", "B": b, "K": K, "ctx": ctx,
                              "median_ms": 0.5} for b in batches]}, 0, ["bench_drafter.py"])

    res = ve.phase_prod(tmp_path, 512, 64, time.monotonic() + 300, device="cpu", child=fake_child,
                        standalone=fake_standalone)
    assert seen["sa"][:4] == (512, 7, (1, 8), True) and 40 <= seen["sa"][4] <= 120
    assert 150 < seen["timeout"] < 300
    assert res["compare"]["1"]["ratio"] == pytest.approx(1.0) and res["compare"]["8"]["ratio"] == pytest.approx(8 ** 0.5)
    assert res["drafter_weights"] == "from checkpoint" and res["runner"] == "v2"
    assert res["table"].count("\n") == 1 and "goal <= 1.1" in res["table"]
    json.dumps(res)


def test_vllm_prod_child_killed_at_the_deadline(tmp_path, monkeypatch):
    """run_prod_child on a child that never finishes: killed with its group at the timeout, partial result kept."""
    spec = {"kwargs": {"gpu_memory_utilization": 0.5}, "calls": [], "timer": str(tmp_path / "t.jsonl"),
            "result": str(tmp_path / "r.json")}
    script = tmp_path / "child.py"
    script.write_text("import json, sys, time\n"
                      f"open({spec['result']!r}, 'w').write(json.dumps({{'calls': [{{'name': 'b1'}}]}}))\n"
                      f"open({spec['timer']!r}, 'w').write(json.dumps({{'t': 1, 'B': 1}}) + '\\n')\n"
                      "time.sleep(60)\n")
    monkeypatch.setattr(ve, "__file__", str(script))                             # the child: this script
    t0 = time.monotonic()
    res = ve.run_prod_child(spec, tmp_path / "prod.log", timeout=3)
    assert time.monotonic() - t0 < 20
    assert res["exit"] == "timeout" and "did not finish" in res["error"]
    assert res["calls"] == [{"name": "b1"}] and res["timer"] == [{"t": 1, "B": 1}]
