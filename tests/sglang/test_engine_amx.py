"""SGLang's CPU engine with its AMX branches FORCED ON (``PEDAGLE_SGLANG_CPU_AMX=1``), on any x86 CPU: the layers
call pedagle's CPU ops (``rmsnorm_cpu``, ``fused_add_rmsnorm_cpu``, ``silu_and_mul_cpu``, ``rotary_embedding_cpu``,
``store_cache_cpu``; in bfloat16 also ``convert_weight_packed`` / ``weight_packed_linear`` for every linear),
as on a Xeon with AMX. The rest of the engine suite runs with AMX forced off (`engine_runs.AMX_DEFAULT`).

Four engines in ONE child process, AMX on: tiny-code target only, PEAGLE K = 3 and SGLang's EAGLE3 K = 3 in float32,
PEAGLE K = 5 in bfloat16. Checks: float32 outputs == the AMX-off target-only run's (test_engine_peagle's, the same
cached engine; a difference tolerated only at a float32 near-tie), PEAGLE's drafts == pedagle's reference step by
step; bfloat16 PEAGLE == the AMX-off bfloat16 target-only run (test_engine_peagle_bf16's) up to target near-ties;
the op trace (``PEDAGLE_SGL_KERNEL_TRACE``) shows the AMX branches ran, so SGLang's own Llama model served (an
import error of an AMX op in a model module makes SGLang fall back to its transformers backend silently).
"""

from __future__ import annotations

import pytest

import engine_runs as er
from engine_runs import EAGLE3, PEAGLE, TARGET

AMX_OPS = {"rmsnorm_cpu", "fused_add_rmsnorm_cpu", "silu_and_mul_cpu", "rotary_embedding_cpu", "store_cache_cpu"}
PACKED_OPS = {"convert_weight_packed", "weight_packed_linear"}
K = 3
K_BF16 = 5


@pytest.fixture(scope="module")
def amx_runs(tmp_path_factory):
    """The AMX-on engines (one child process, with the op trace) and the AMX-off baselines they are compared with
    (cached: shared with test_engine_peagle / test_engine_peagle_bf16)."""
    from engine_harness import eagle3_drafter_copy
    from pedagle_backends.sglang.cpu import AMX_ENV
    from sgl_kernel._library import TRACE_ENV
    from test_engine_peagle import jobs, specs
    from test_engine_peagle_bf16 import ENGINE as BF16_ENGINE
    from test_engine_peagle_bf16 import jobs as bf16_jobs

    tmp = tmp_path_factory.mktemp("amx")
    trace = tmp / "ops.txt"
    eagle3 = eagle3_drafter_copy(EAGLE3, tmp / "eagle3")
    f32 = specs()["f32-target"]
    on = {"amx-f32-target": er.Spec(TARGET, None, 0, jobs(K)[:2], "float32", engine=dict(f32.engine)),
          f"amx-f32-peagle-k{K}": er.Spec(TARGET, PEAGLE, K, jobs(K)[:2], "float32", engine=dict(f32.engine)),
          f"amx-f32-eagle3-k{K}": er.Spec(TARGET, eagle3, K, jobs(K)[:1], "float32", algorithm="EAGLE3",
                                           engine=dict(f32.engine)),
          f"amx-bf16-peagle-k{K_BF16}": er.Spec(TARGET, PEAGLE, K_BF16, bf16_jobs()[:1], "bfloat16",
                                                engine=dict(BF16_ENGINE))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(AMX_ENV, "1")
        mp.setenv(TRACE_ENV, str(trace))
        runs = er.run_many(on)
    ops_by_pid: dict[str, set[str]] = {}
    for line in trace.read_text().splitlines():
        pid, name = line.split()
        ops_by_pid.setdefault(pid, set()).add(name)
    base = er.run_many({"f32-target": f32,
                        "bf16-target": er.Spec(TARGET, None, 0, bf16_jobs(), "bfloat16", engine=dict(BF16_ENGINE))})
    # the processes that ran a model (SGLang's schedulers: one per engine)
    return {**runs, **base, "ops": [o for o in ops_by_pid.values() if "extend_attention_cpu" in o]}


def test_forced_on_ran_the_amx_branches_with_pedagles_ops(amx_runs):
    ops = amx_runs["ops"]
    assert len(ops) >= 4, ops                       # one scheduler process per engine wrote its ops
    for got in ops:
        assert AMX_OPS <= got, sorted(AMX_OPS - got)   # every engine: norms, activation, RoPE, KV store on AMX ops
    assert any(PACKED_OPS <= got for got in ops)    # the bfloat16 engine's linears ran on packed weights
    print(f"AMX-on engines' ops: {[sorted(o) for o in ops]}")


@pytest.mark.parametrize("key", ["amx-f32-target", f"amx-f32-peagle-k{K}", f"amx-f32-eagle3-k{K}"])
def test_float32_outputs_equal_amx_off_target_only(amx_runs, key):
    from test_engine_peagle import assert_lossless, jobs

    ties = []
    n_jobs = 1 if "eagle3" in key else 2
    for j in jobs(K)[:n_jobs]:
        got = amx_runs[key].results[j.name]
        assert [len(o) for o in got["outputs"]] == j.max_new, (key, j.name)
        ties += assert_lossless(got, amx_runs["f32-target"].results[j.name], j.prompts, f"{key} {j.name}")
    print(f"{key}: == AMX-off target-only; float32 near-ties: {ties or 'none'}")


def test_peagle_drafts_equal_reference_with_amx_on(amx_runs):
    from pedagle_conformance.compare import compare_e2e
    from pedagle_core.engine.backend import ReferenceBackend
    from test_engine_peagle import F32_TIE, STEPS, jobs

    run = amx_runs[f"amx-f32-peagle-k{K}"]
    cfg = run.config()
    assert cfg["target_layers_to_capture"] == cfg["aux_layer_ids"] == [2, 4, 5]
    job = jobs(K)[0]
    got = er.case_result(run, "batch", K, STEPS)
    ref = ReferenceBackend().run_case(str(TARGET), str(PEAGLE), job.prompts, K=K, mode="parallel", steps=STEPS,
                                      dtype="float32", device="cpu")
    short_steps = sum(a is not None for a in (row[3] for row in got["accepted"]))
    cmp = compare_e2e(ref, got, K, "parallel", F32_TIE, steps_per_request=[STEPS, STEPS, STEPS, short_steps])
    assert not cmp.failures, [m.describe(F32_TIE) for m in cmp.failures[:5]]
    assert not cmp.desync, cmp.desync
    for s in range(STEPS):
        for b in range(3):
            assert got["drafts"][s][b] == ref["drafts"][s][b] and got["accepted"][s][b] == ref["accepted"][s][b]
    print(f"AMX on, K={K}: drafts identical to the reference over {cmp.drafts_compared} draft slots")


def test_bf16_peagle_on_packed_weights_differs_only_at_near_ties(amx_runs):
    from test_engine_peagle_bf16 import BF16_TIE
    from test_engine_peagle_bf16 import jobs as bf16_jobs

    spec, base = amx_runs[f"amx-bf16-peagle-k{K_BF16}"], amx_runs["bf16-target"]
    same, ties = 0, []
    for j in bf16_jobs()[:1]:
        for b, (g, t) in enumerate(zip(spec.results[j.name]["outputs"], base.results[j.name]["outputs"])):
            assert len(g) == len(t) == j.max_new[b]
            i = er.first_difference(g, t)
            if i is None:
                same += 1
                continue
            margin, _ = er.target_margin(j.prompts[b] + t[:i])
            ties.append((j.name, b, i, round(margin, 4)))
            assert margin < BF16_TIE, (f"{j.name} request {b}: AMX-on bf16 PEAGLE differs from AMX-off bf16 "
                                       f"target-only at token {i}, float32 margin {margin:.3g} >= {BF16_TIE}")
    assert same >= len(ties), (same, ties)          # mostly identical: packed linears are right, not just plausible
    print(f"AMX-on bf16 PEAGLE K={K_BF16}: {same} of {same + len(ties)} requests identical; near-ties {ties or 'none'}")

