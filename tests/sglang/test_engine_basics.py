"""SGLang's CPU engine itself, before any pedagle drafter: target-only greedy decoding equals transformers' greedy
decoding (float32, tiny-code), and the engine really runs on pedagle's CPU ``sgl_kernel`` ops with the
``intel_amx`` attention backend (SGLang's EAGLE3 included), through the subprocess harness the benchmark uses.

Engine starts: none of its own for the first test (it starts test_engine_peagle's engines, cached per pytest
process by `engine_runs`, and reads their float32 target-only run); one for the harness test (EAGLE3, K = 2).
"""

from __future__ import annotations

import pytest

import engine_runs as er
from engine_harness import EngineConfig, run_engine
from engine_runs import EAGLE3, TARGET

F32_TIE = 1e-4


def hf_greedy(prompt: list[int], n: int) -> list[int]:
    """transformers' float32 greedy continuation of ``prompt`` (n tokens, EOS not special), with its KV cache."""
    import torch

    model = er.float32_target()
    out: list[int] = []
    with torch.no_grad():
        o = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            out.append(int(o.logits[0, -1].argmax()))
            o = model(torch.tensor([[out[-1]]]), past_key_values=o.past_key_values, use_cache=True)
    return out


def assert_equal_up_to_ties(got: list[int], prompt: list[int], ref: list[int], what: str) -> None:
    i = er.first_difference(got, ref)
    if i is None:
        return
    assert len(got) == len(ref), f"{what}: {len(got)} tokens, transformers {len(ref)}"
    margin, top2 = er.target_margin(prompt + ref[:i])
    assert margin < F32_TIE, (f"{what}: SGLang's output differs from transformers' greedy at token {i} "
                              f"({got[i]} vs {ref[i]}), float32 top-2 margin there {margin:.3g} >= {F32_TIE}")


def test_target_only_equals_transformers_greedy_float32():
    from test_engine_peagle import specs

    all_specs = specs()                   # test_engine_peagle's engines, all started in one child and cached
    run = er.run_many(all_specs)["f32-target"]
    for job in all_specs["f32-target"].jobs:
        if job.name == "maxctx" or job.name.startswith("radix"):   # ends at the context length / repeated
            continue                      # prompts: the batch and long jobs cover the same path
        outs = run.results[job.name]["outputs"]
        assert [len(o) for o in outs] == job.max_new
        for b, (prompt, n) in enumerate(zip(job.prompts, job.max_new)):
            assert_equal_up_to_ties(outs[b], prompt, hf_greedy(prompt, n), f"{job.name} request {b}")


def test_harness_runs_eagle3_on_pedagles_cpu_kernels(tmp_path):
    trace = tmp_path / "ops.txt"
    prompts = er.prompts([7, 19, 33], start=3)
    cfg = EngineConfig(target=TARGET, drafter=EAGLE3, algorithm="EAGLE3", K=2, dtype="float32",
                       env={"PEDAGLE_SGL_KERNEL_TRACE": str(trace)})
    res = run_engine(cfg, [{"prompts": prompts, "max_new_tokens": [12, 20, 9]}])
    print(f"[harness EAGLE3 K=2] engine start {res['start_s']:.0f} s, process {res['process_s']:.0f} s")
    assert res["attention_backend"] == "intel_amx"
    case = res["cases"][0]
    for b, prompt in enumerate(prompts):
        assert_equal_up_to_ties(case["outputs"][b], prompt, hf_greedy(prompt, len(case["outputs"][b])),
                                f"EAGLE3 request {b}")
    assert [len(o) for o in case["outputs"]] == [12, 20, 9]
    assert all(m["spec_verify_ct"] > 0 for m in case["meta"])
    used = {line.split()[1] for line in trace.read_text().splitlines()}
    # the scheduler's forward passes ran on pedagle's ops: prefill/verify (extend), the draft steps (decode),
    # SGLang's EAGLE bookkeeping
    expected = {"extend_attention_cpu", "decode_attention_cpu", "verify_tree_greedy_cpu",
                "build_tree_kernel_efficient_cpu", "assign_req_to_token_pool_cpu"}
    assert expected <= used, f"ops not used: {sorted(expected - used)}; used: {sorted(used)}"
    print("sgl_kernel ops used:", sorted(used))


@pytest.mark.parametrize("algorithm", ["bogus"])
def test_harness_rejects_a_bad_configuration(algorithm):
    with pytest.raises(ValueError, match="algorithm"):
        EngineConfig(target=TARGET, drafter=EAGLE3, algorithm=algorithm)
    with pytest.raises(ValueError, match="drafter"):
        EngineConfig(target=TARGET, algorithm="EAGLE3")
