"""bench/sglang_gpu_e2e.py without an engine (issue 22, items 4-5): its plans, heads, comparison and classification
functions on synthetic records, the draft-step timer (backends/sglang/step_timer.py) on the CPU, and the whole
``--dry-run`` (the check analysis on results synthesised from pedagle's reference engine must pass, and fail
once a draft is corrupted). The GPU phases themselves run only on the lent GPU (bench/gpu_run.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import prod_shapes  # noqa: E402
import sglang_gpu_e2e as e2e  # noqa: E402

from pedagle_backends.sglang import runner, step_timer  # noqa: E402
from pedagle_core.engine import step_timer as core_step_timer  # noqa: E402


# ---------------------------------------------------------------------------------------------- records
def test_positions_follow_acceptance():
    steps = [{"drafts": [5, 6, 7], "accepted": None}, {"drafts": [8, 9, 10], "accepted": 2},
             {"drafts": [1, 2, 3], "accepted": 0}, {"drafts": [4, 4, 4], "accepted": None}]
    # prompt of 10 tokens: step 0 at position 9; +3 (2 accepted + bonus); +1; a missing count ends the walk
    assert e2e.positions_of(steps, 10) == {9: [5, 6, 7], 12: [8, 9, 10], 13: [1, 2, 3]}


def test_records_round_trip_through_the_runner_parser():
    case = {"K": 2, "drafts": [[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 9], None]],
            "accepted": [[1, 0], [2, None], [0, None]]}
    rids = ["r-0", "r-1"]
    recs = e2e.records_from_case(case, rids)
    assert recs[0]["kind"] == "config" and recs[1]["kind"] == "prefill" and recs[2]["accept_lens"] == [2, 1]
    steps = runner.per_request_steps(recs, rids)
    assert [s["drafts"] for s in steps[0]] == [[1, 2], [5, 6], [9, 9]]
    assert [s["accepted"] for s in steps[0]] == [None, 1, 2]
    assert [s["drafts"] for s in steps[1]] == [[3, 4], [7, 8]]
    got = runner.to_case_result({"records": recs, "rids": rids, "outputs": [[0] * 20, [0] * 20], "meta": [{}, {}]},
                                2, 2)
    assert got["drafts"] == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    assert got["accepted"] == [[1, 0], [2, None]]
    assert got["accepted_per_position"] == [2, 1]


def test_step_compare_equal_and_different():
    ref = {"drafts": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "accepted": [[1, 0], [2, 1]],
           "accepted_per_position": [3, 1]}
    same = e2e.step_compare(json.loads(json.dumps(ref)), ref)
    assert same["ok"] and same["compared"] == 4 and same["drafts_equal"] == 4
    other = json.loads(json.dumps(ref))
    other["drafts"][1][0] = [5, 9]
    other["accepted"][1][0] = 1
    other["accepted_per_position"] = [3, 0]
    diff = e2e.step_compare(other, ref)
    assert not diff["ok"] and diff["drafts_equal"] == 3 and diff["accepted_equal"] == 3
    assert diff["first_differences"][0]["step"] == 1 and not diff["per_position_equal"]


class FixedLogits(torch.nn.Module):
    """A 'float32 target' whose next-token logits are fixed: tokens 5 and 6 nearly tied, 9 far below."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.row = torch.full((16,), -5.0)
        self.row[5], self.row[6], self.row[9] = 10.0, 9.99, 2.0

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.row.expand(1, input_ids.shape[1], 16).clone()})()


def test_output_check_float32_exact_bf16_classified():
    prompts, ref = [[1, 2], [3]], [[5, 5, 5], [5, 5]]
    ok = e2e.output_check([[5, 5], [5, 5]], ref, prompts, "float32")
    assert ok["ok"] and ok["equal"] == 2                      # compared over the speculative output's length
    bad = e2e.output_check([[5, 6], [5, 5]], ref, prompts, "float32")
    assert not bad["ok"] and bad["failures"] == 1 and bad["divergences"][0]["position"] == 1
    tie = e2e.output_check([[5, 6], [5, 5]], ref, prompts, "bfloat16", FixedLogits())
    assert tie["ok"] and tie["near_ties"] == 1 and tie["divergences"][0]["near_tie"]
    far = e2e.output_check([[5, 9], [5, 5]], ref, prompts, "bfloat16", FixedLogits())
    assert not far["ok"] and far["failures"] == 1
    short = e2e.output_check([[5, 5, 5, 5], [5, 5]], ref, prompts, "float32")
    assert not short["ok"] and "fewer" in short["divergences"][0]["why"]


# ---------------------------------------------------------------------------------------------- bench / prod
def test_bench_schedule_rounds_and_best_k():
    runs = []
    fake = {"target-only": 100, "eagle3-k1": 150, "eagle3-k3": 170, "eagle3-k5": 190, "eagle3-k7": 160,
            "peagle-k3": 200, "peagle-k5": 230, "peagle-k7": 210}
    order = []
    while (nxt := e2e.bench_next(runs, 2)) is not None:
        order.append(nxt)
        tps = fake.get(nxt[1].removesuffix("-eager"), 50) * (0.5 if nxt[1].endswith("-eager") else 1)
        runs.append({"round": nxt[0], "config": nxt[1], "tokens_per_s": {"1": tps, "8": 4 * tps}})
    r0 = [n for r, n in order if r == 0]
    r1 = [n for r, n in order if r == 1]
    assert r0 == list(fake) + ["peagle-k5-eager"]              # the eager A/B at PEAGLE's best K of round 0
    assert r1 == ["peagle-k5-eager", "peagle-k7", "peagle-k5", "peagle-k3", "eagle3-k5", "eagle3-k3", "target-only"]
    only = []
    while (nxt := e2e.bench_next(only, 2, ["target-only", "peagle-k7*"])) is not None:
        only.append({"round": nxt[0], "config": nxt[1], "tokens_per_s": {"1": 1.0}})
    assert [(r["round"], r["config"]) for r in only] == [(0, "target-only"), (0, "peagle-k7"), (0, "peagle-k7-eager"),
                                                         (1, "peagle-k7-eager"), (1, "peagle-k7"), (1, "target-only")]
    s = e2e.bench_summary(runs)
    g = s["goals"]["1"]
    assert g["peagle_best"] == 230 and g["eagle3_best"] == 190 and g["peagle_vs_target"] == pytest.approx(2.3)
    assert "PEAGLE best / EAGLE3 best 1.211" in e2e.bench_table(s)
    with pytest.raises(ValueError, match="bench configuration 'eagle4-k3'"):
        e2e.bench_config("eagle4-k3", {"tiny-target": "t"}, overlap=True)
    eager = e2e.bench_config("peagle-k5-eager", {"tiny-target": "t", "tiny-peagle": "p"}, overlap=True)
    assert eager["env"] == {"PEDAGLE_SGLANG_DRAFT_GRAPHS": "0"}
    assert eager["kwargs"]["speculative_num_draft_tokens"] == 6
    assert "disable_overlap_schedule" not in eager["kwargs"]                  # PEAGLE follows --overlap like the rest
    sync = e2e.bench_config("peagle-k5", {"tiny-target": "t", "tiny-peagle": "p"}, overlap=False)
    assert sync["kwargs"]["disable_overlap_schedule"] is True


def test_draft_share_and_prod_ratio():
    calls = [{"name": "b1", "i": 0, "batch": 1, "seconds": 1.0, "t0": 100.0, "t1": 101.0},
             {"name": "b1", "i": 1, "batch": 1, "seconds": 1.0, "t0": 102.0, "t1": 103.0},
             {"name": "b8", "i": 1, "batch": 8, "seconds": 2.0, "t0": 104.0, "t1": 106.0}]
    timer = [{"t": 100.5, "B": 1, "gpu_ms": 9.0, "cpu_ms": 1.0},          # warm-up call: left out
             {"t": 102.2, "B": 1, "gpu_ms": 0.2, "cpu_ms": 0.1}, {"t": 102.9, "B": 1, "gpu_ms": 0.3, "cpu_ms": 0.1},
             {"t": 104.5, "B": 8, "gpu_ms": 0.5, "cpu_ms": 0.1}, {"t": 105.0, "B": 5, "gpu_ms": 0.4, "cpu_ms": 0.1}]
    res = {"calls": calls, "timer": timer}
    s1 = e2e.draft_share(res, "b1", 1)
    assert s1["steps"] == 2 and s1["draft_gpu_ms_median"] == pytest.approx(0.25)
    assert s1["share"] == pytest.approx(0.5 / 1000)
    s8 = e2e.draft_share(res, "b8", 8)
    assert s8["steps"] == 2 and s8["draft_gpu_ms_full_batch"] == [0.5]   # the B=5 tail is not a full batch
    standalone = {"results": [{"family": e2e.PROD_FAMILY, "mode": "parallel", "B": 1, "K": 7, "ctx": 512,
                               "median_ms": 0.2}]}
    cmp = e2e.prod_compare(res, standalone, 7, 512, (1, 8))
    assert cmp["1"]["ratio"] == pytest.approx(1.25) and cmp["8"]["ratio"] is None
    cmd = e2e.standalone_command(Path("/o"), 512, 7, (1, 8), dry=False)
    assert cmd[cmd.index("--families") + 1] == e2e.PROD_FAMILY and cmd[cmd.index("--ks") + 1] == "7"


# ---------------------------------------------------------------------------------------------- heads
def test_heads_for_sglang(tmp_path):
    e3 = e2e.sglang_eagle3_head(e2e.FAMILY / "eagle3", tmp_path / "e3")
    src = json.loads((e2e.FAMILY / "eagle3" / "config.json").read_text())
    cfg = json.loads((e3 / "config.json").read_text())
    assert cfg["architectures"] == [e2e.EAGLE3_ARCH]
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [
        i - 1 for i in src["eagle_config"]["eagle_aux_hidden_state_layer_ids"]]
    assert (e3 / "model.safetensors").resolve() == (e2e.FAMILY / "eagle3" / "model.safetensors").resolve()
    swa = e2e.sliding_window_head(e2e.RANDOM / "qwen3-peagle", tmp_path / "swa", window=4)
    from pedagle_core.formats.load import read_config

    c, _ = read_config(swa)
    assert [c.layer_window(i) for i in range(c.num_hidden_layers)] == [4] * c.num_hidden_layers
    bad = tmp_path / "noaux"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="eagle_aux_hidden_state_layer_ids"):
        e2e.sglang_eagle3_head(bad, tmp_path / "x")


def test_production_head_is_a_strict_checkpoint(tmp_path):
    from bench_drafter import DRY_FAMILIES, PARALLEL_LAYERS

    from pedagle_core.formats.load import load_drafter

    tdir, hdir = e2e.write_prod_models(tmp_path, dry=True)
    t = json.loads((tdir / "config.json").read_text())
    h = DRY_FAMILIES[e2e.PROD_FAMILY]
    assert t["architectures"] == ["Qwen3ForCausalLM"] and t["hidden_size"] == h["target_hidden_size"]
    assert not list(tdir.glob("*.safetensors"))                    # load_format="dummy": config only
    d = load_drafter(hdir, dtype=torch.bfloat16, mode="parallel")
    assert d.config.num_hidden_layers == PARALLEL_LAYERS and d.config.hidden_size == h["hidden_size"]
    assert d.config.aux_layer_ids == prod_shapes.prod_aux_layer_ids(t["num_hidden_layers"])
    assert len(set(d.config.aux_layer_ids)) == 3
    full = prod_shapes.prod_target_config(dry=False)                      # the GPU shape: bench_drafter's head family
    assert (full["hidden_size"], full["num_attention_heads"], full["num_key_value_heads"], full["head_dim"],
            full["vocab_size"]) == (2048, 32, 4, 128, 151936)


def test_check_plan(tmp_path):
    heads = e2e.prepare_heads(tmp_path)
    cfgs = e2e.check_configs(heads, ("tiny", "random"), ("bfloat16", "float32"), (1, 3, 7), steps=10, random_steps=6)
    names = [c.name for c in cfgs]
    assert names[:2] == ["tiny-target-bfloat16", "tiny-peagle-k3-bfloat16"]      # most important first
    assert {"tiny-eagle3-k3-float32", "peagle-spec-k7-float32", "qwen3-peagle-k1-float32",
            "qwen3-peagle-swa-k3-float32"} <= set(names)
    tiny = [c for c in cfgs if c.group == "tiny"]
    assert len({len(p) for p in tiny[0].prompts}) == len(tiny[0].prompts) == 8   # different lengths, one batch
    for c in cfgs:
        if c.baseline:
            base = next(b for b in cfgs if b.name == c.baseline)
            assert base.algorithm is None and base.dtype == c.dtype and base.max_new >= c.max_new
            assert base.prompts == c.prompts
    job = cfgs[1].job(e2e.GPU_ENGINE)
    assert job["engine"]["attention_backend"] == "triton" and job["engine"]["disable_cuda_graph"] is False
    assert job["algorithm"] == "PEAGLE" and len(job["calls"]) == 1 and len(job["calls"][0]["prompts"]) == 8
    kw = runner.engine_kwargs(job["target"], job["drafter"], job["K"], **job["engine"])
    assert kw["disable_cuda_graph"] is False                           # the job's keywords win over the default


# ---------------------------------------------------------------------------------------------- plumbing
def test_step_timer_on_cpu(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"

    class Worker:
        K = 3

        def _draft_extend_for_decode(self, batch, batch_result):
            return batch_result * 2

    monkeypatch.delenv(step_timer.TIME_ENV, raising=False)
    step_timer.instrument(Worker)
    assert not getattr(Worker._draft_extend_for_decode, "__pedagle_timed__", False)   # no variable: untouched
    monkeypatch.setenv(step_timer.TIME_ENV, str(path))
    step_timer.instrument(Worker)
    batch = type("B", (), {"seq_lens": torch.zeros(5)})()
    assert Worker()._draft_extend_for_decode(batch, 21) == 42
    step_timer.timer().close()
    rows = step_timer.read(str(path))
    assert len(rows) == 1 and rows[0]["B"] == 5 and rows[0]["K"] == 3 and rows[0]["kind"] == "decode"
    assert rows[0]["gpu_ms"] is None and rows[0]["cpu_ms"] >= 0 and rows[0]["t"] > 0
    core_step_timer._TIMERS.pop(str(path), None)              # the process's timer of that file (closed)


def test_engine_args_from_environment(monkeypatch):
    monkeypatch.setenv(runner.ENGINE_ARGS_ENV, '{"attention_backend": "triton"}')
    assert runner.extra_engine_args() == {"attention_backend": "triton"}
    monkeypatch.setenv(runner.ENGINE_ARGS_ENV, "[1]")
    with pytest.raises(ValueError, match="PEDAGLE_SGLANG_ENGINE_ARGS.*JSON object"):
        runner.extra_engine_args()
    monkeypatch.setenv(runner.ENGINE_ARGS_ENV, "attention_backend=triton")
    with pytest.raises(ValueError, match="PEDAGLE_SGLANG_ENGINE_ARGS: not JSON"):
        runner.extra_engine_args()


def test_python_wrapper_sets_the_environment(tmp_path):
    w = e2e.python_wrapper(tmp_path / "py", "/some/site:/other/site")
    out = subprocess.run([str(w), "-c", "import os; print(os.environ['PYTHONPATH'])"], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0 and out.stdout.strip() == "/some/site:/other/site"
    cmd = e2e.conformance_command(tmp_path, "reference,vllm,sglang", {"vllm": "/a", "sglang": "/b"}, ["c1"])
    assert cmd[cmd.index("--device") + 1] == "cuda" and "vllm=/a" in cmd and "sglang=/b" in cmd and "c1" in cmd


@pytest.mark.parametrize("argv, needle", [(["--phases", "check,warp"], "--phases: unknown ['warp']"),
                                          (["--phase-budget", "bench:30"], "--phase-budget 'bench:30'"),
                                          (["--check-groups", "tiny,huge"], "--check-groups: unknown ['huge']"),
                                          ([], "--out is required")])
def test_cli_errors_name_the_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        e2e.parse_args(argv + (["--out", "/tmp/x"] if argv else []))
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_dry_run_end_to_end(tmp_path):
    """The whole --dry-run: every phase planned, the check analysis passes on the reference engine's own results
    and fails on corrupted drafts; --reanalyze redoes it from the logs the run left."""
    rc = e2e.main(["--dry-run", "--out", str(tmp_path), "--check-groups", "random", "--random-steps", "3"])
    assert rc == 0
    res = json.loads((tmp_path / "sglang_gpu.json").read_text())
    dry = res["dry_run"]
    assert dry["bench_schedule"][0] == [0, "target-only"] and dry["bench_schedule"][-1][0] == 1
    assert "--dry-run" in dry["standalone_command"] and "sglang=PY_SGLANG" in dry["conformance_command"]
    assert res["env"]["commit"] and res["env"]["device"] == "cpu"
    syn = {r["name"]: r for r in dry["check_synthetic"]}
    assert all(r["ok"] for r in syn.values()), [r for r in syn.values() if not r["ok"]]
    pe = syn["qwen3-peagle-swa-k3-float32"]
    assert pe["drafts_vs_forced_reference"]["slots"] > 0 and pe["reference_engine"]["compared"] > 0
    bad = {r["name"]: r for r in dry["check_corrupted"]}
    for name in ("peagle-k3-float32", "qwen3-peagle-swa-k3-float32"):
        assert not bad[name]["ok"]
        assert bad[name]["drafts_vs_forced_reference"]["n_unexplained"] > 0
        assert bad[name]["reference_engine"]["drafts_equal"] < bad[name]["reference_engine"]["compared"]
    again = tmp_path / "again"
    assert e2e.main(["--reanalyze", str(tmp_path), "--out", str(again), "--no-reference-engine"]) == 0
    re = json.loads((again / "sglang_gpu.json").read_text())["check"]
    assert re["ok"] and re["reanalysis_of"] == str(tmp_path) and re["reference_device"] == "cpu"
    assert [r["name"] for r in re["configs"]] == [r["name"] for r in dry["check_synthetic"]]
    assert all("reference_engine" not in r for r in re["configs"])
