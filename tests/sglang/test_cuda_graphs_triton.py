"""PEAGLE's decode draft-step graph runner on SGLang's Triton attention backend (the one captured on the GPU),
checked on the CPU: SGLang's graph-metadata code and its extend-attention kernel (Triton's interpreter), a
graph stood in for by the metadata it baked at capture (see triton_graph_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_check(override: bool, window: int | None = None) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, str(HERE / "triton_graph_check.py"), "1" if override else "0"]
    proc = subprocess.run(argv + ([str(window)] if window else []), env=env, capture_output=True, text=True,
                          timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def with_override():
    return run_check(True)


@pytest.mark.sglang_versions
def test_graph_metadata_lays_out_2k_rows_per_request(with_override):
    K = 3
    # every captured size: the extend kernel covers 2K rows per request, one request per graph row
    assert with_override["meta"] == {"1": [2 * K, 1], "2": [2 * K, 2], "4": [2 * K, 4]}
    for s in with_override["steps"]:
        assert s["graph_bs"] == 4                                   # 3 requests in the graph of 4
    first = with_override["steps"][0]
    assert first["kv_indptr"] == [0, 4, 13, 19, 19]                 # committed prefixes; the padding request: none


@pytest.mark.sglang_versions
def test_replayed_drafts_equal_the_eager_path_on_triton(with_override):
    assert all(s["equal"] for s in with_override["steps"]), with_override["steps"]


def test_without_the_2k_override_the_drafts_differ():
    """SGLang's own setting (num_draft_tokens = K+1) lays out K+1 rows per request: wrong for PEAGLE's 2K."""
    res = run_check(False)
    assert res["meta"]["4"] == [4, 4]
    assert not all(s["equal"] for s in res["steps"])


@pytest.mark.sglang_versions
def test_sliding_window_drafter_replays_through_the_window_rail_or_is_refused():
    """A drafter with a sliding-window layer (window 4; the steps' prefixes are longer). Where SGLang's Triton
    draft-extend graph metadata builds the window rail (0.5.23: its draft-extend buffer update fills it), the
    replayed drafts equal the eager path's; where it does not (0.5.17), the capture is refused (the worker then
    drafts eagerly) instead of attending without the window."""
    import inspect

    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    has_rail = "sliding_window" in inspect.getsource(TritonAttnBackend._update_draft_extend_buffers)
    res = run_check(True, window=4)
    if has_rail:
        assert "unsupported" not in res and all(s["equal"] for s in res["steps"]), res
    else:
        assert "no window rail" in res.get("unsupported", ""), res
