"""``PEDAGLE_SGLANG_CPU_AMX`` (`pedagle_backends.sglang.cpu`): SGLang's AMX branches forced on or off in a fresh
process, as in the engine's spawned scheduler (which imports SGLang's layers before any pedagle code of its own
runs: pedagle's CPU ``sgl_kernel``, imported by SGLang, applies the switch there). No engine starts here;
tests/sglang/test_engine_amx.py runs engines with AMX forced on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("sgl_kernel", reason="pedagle's CPU sgl_kernel: SGLang test venv only")
pytestmark = pytest.mark.sglang_versions     # SGLang's AMX probe and its import order differ by release (0.5.17: 13 pass)

from pedagle_backends.sglang import cpu  # noqa: E402

# What the scheduler process imports first (unpickling its target), then the dense models' modules.
SCHEDULER_IMPORTS = """
import json, os, sys, torch
import sglang.srt.managers.scheduler
import sglang.srt.models.llama, sglang.srt.models.qwen3, sglang.srt.models.llama_eagle3
from sglang.srt.utils import cpu_has_amx_support
from sglang.srt.layers.rotary_embedding import utils as rope_utils
from pedagle_backends.sglang import cpu
out = {"probe": cpu_has_amx_support(), "decisions": cpu.amx_decisions(),
       "rope_op": rope_utils.apply_rotary_pos_emb is torch.ops.sgl_kernel.apply_rotary_pos_emb_cpu,
       "packing_op": hasattr(torch.ops.sgl_kernel, "convert_weight_packed")}
if os.environ.get("FLIP"):                     # the switch turned the other way after SGLang's layers decided
    os.environ[cpu.AMX_ENV] = os.environ["FLIP"]
    try:
        cpu.apply_in_process()
    except RuntimeError as e:
        out["flip_error"] = str(e)
print("RESULT" + json.dumps(out))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "SGLANG_USE_CPU_ENGINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300,
                          cwd="/")


def scheduler_like(mode: str, flip: str = "") -> dict:
    proc = run_python(SCHEDULER_IMPORTS, **{cpu.AMX_ENV: mode, "FLIP": flip})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_forced_on_takes_the_amx_branches_on_any_cpu():
    res = scheduler_like("1", flip="0")
    assert res["probe"] is True and res["packing_op"] is True
    assert len(res["decisions"]) >= 8 and all(res["decisions"].values()), res["decisions"]
    for mod in ("layernorm", "activation", "quantization.unquant", "vocab_parallel_embedding"):
        assert res["decisions"][f"sglang.srt.layers.{mod}._is_cpu_amx_available"] is True
    assert res["rope_op"] is True                  # the import-time lookup of an AMX op succeeded
    assert "came too late" in res["flip_error"] and "AMX=True" in res["flip_error"]


def test_forced_off_keeps_the_plain_branches_on_any_cpu():
    res = scheduler_like("0", flip="1")
    assert res["probe"] is False
    assert res["packing_op"] is False              # SGLang recognises an AMX sgl_kernel by this op
    assert len(res["decisions"]) >= 8 and not any(res["decisions"].values()), res["decisions"]
    assert res["rope_op"] is False
    assert "came too late" in res["flip_error"] and "AMX=False" in res["flip_error"]


def test_auto_leaves_the_decision_to_sglang():
    res = scheduler_like("auto")
    proc = run_python("import torch; print('AMX', torch.cpu._is_amx_tile_supported())")
    host_amx = "AMX True" in proc.stdout
    assert res["probe"] is host_amx and set(res["decisions"].values()) == {host_amx}


@pytest.mark.parametrize("value", ["yes", "2", "on"])
def test_a_bad_value_is_refused_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv(cpu.AMX_ENV, value)
    with pytest.raises(ValueError, match=f"{cpu.AMX_ENV}='{value}': expected 1 .*, 0 .* or auto"):
        cpu.amx_forced()
    proc = run_python("import sgl_kernel", **{cpu.AMX_ENV: value})
    assert proc.returncode != 0 and cpu.AMX_ENV in proc.stderr


@pytest.mark.parametrize("value, want", [("1", True), ("0", False), ("auto", None), ("", None), (" 0 ", False)])
def test_values(value, want, monkeypatch):
    monkeypatch.setenv(cpu.AMX_ENV, value)
    assert cpu.amx_forced() is want
    monkeypatch.delenv(cpu.AMX_ENV)
    assert cpu.amx_forced() is None


def test_sgl_kernel_imported_before_sglangs_probe_module_still_forces_it():
    """An SGLang whose processes import ``sgl_kernel`` before the probe module (0.5.17's order): an import hook sets
    the probe once the module has run."""
    code = ("import sys, sgl_kernel; assert 'sglang.srt.utils.common' not in sys.modules\n"
            "from sglang.srt.utils import common; print('PROBE', common.is_amx_tile_supported)")
    for mode, want in (("1", "PROBE True"), ("0", "PROBE False")):
        proc = run_python(code, **{cpu.AMX_ENV: mode})
        assert want in proc.stdout, (mode, proc.stdout[-500:], proc.stderr[-2000:])


def test_a_probe_module_mid_import_gets_the_answer_through_torch_once():
    """The probe module is being imported (its probe not assigned yet) when the switch is applied: torch's answer is
    forced for exactly one call, the one the module makes next."""
    import types

    import torch

    original = torch.cpu._is_amx_tile_supported
    cpu._set_probe(types.SimpleNamespace(), True)
    try:
        assert torch.cpu._is_amx_tile_supported() is True
    finally:
        got_back = torch.cpu._is_amx_tile_supported
        torch.cpu._is_amx_tile_supported = original
    assert got_back is original
