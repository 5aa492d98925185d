#!/usr/bin/env python3
"""Compile the decode-attention kernels for sm_90 WITHOUT a GPU and print their resources (registers,
stack, spills via local loads, shared memory, wgmma / mma / cp.async counts in the SASS), using the
ptxas and cuobjdump that ship inside the triton wheel. Costs no device time.

    python3 bench/compile_check_attention.py
    # against the device's Triton version (3.6), installed aside:
    #   pip download triton==3.6.0 --no-deps -d /tmp/tw && python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install /tmp/tw/*.whl
    #   PYTHONPATH=/tmp/t36/lib/python3.11/site-packages:. python3 bench/compile_check_attention.py
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pedagle_core.kernels import decode_attention as da  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
COB = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def compile_one(fn, sig: dict, const: dict, div16=(), num_warps=4, num_stages=3) -> str:
    sig = dict(sig, **{k: "constexpr" for k in const})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    k = triton.compile(ASTSource(fn, sig, constexprs=const, attrs=attrs), target=TARGET,
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    res = subprocess.run([COB, "-res-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([COB, "-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    short = {k: v for k, v in const.items() if k in ("G", "ROWS", "HEAD_DIM", "BLOCK_N", "SPLIT", "PAGED", "BLOCK_H", "ROW")}
    return (f"{fn.__name__[:16]:16s} {short} w={num_warps} s={num_stages}: {m.group(0) if m else '?'} "
            f"smem={k.metadata.shared} HGMMA={sass.count('HGMMA')} HMMA={sass.count('HMMA')} "
            f"LDGSTS={sass.count('LDGSTS')} LDG128={sass.count('LDG.E.128')} LDL={sass.count('LDL')}")


def main() -> None:
    print("triton", triton.__version__, "target sm_90")
    sig = {n: "*bf16" for n in ["q_ptr", "kc_ptr", "vc_ptr", "out_ptr"]}
    sig.update(pos_ptr="*i64", table_ptr="*i32", bt_ptr="*i64", po_ptr="*fp32", plse_ptr="*fp32", cnt_ptr="*i32",
               qk_scale="fp32")
    for n in ["window", "ctx_limit", "block_size", "max_rows", "n_splits", "n_kv_heads", "q_st", "q_sh", "c_ss",
              "c_sh", "bt_sb", "o_st", "o_sh", "po_ss", "po_st", "po_sh", "pl_ss", "pl_st"]:
        sig[n] = "i32"
    div = ["q_ptr", "kc_ptr", "vc_ptr", "out_ptr", "po_ptr", "plse_ptr", "cnt_ptr", "pos_ptr", "table_ptr", "bt_ptr", "q_st",
           "q_sh", "c_ss", "c_sh", "o_st", "o_sh", "po_ss", "po_st", "po_sh", "pl_ss", "pl_st", "block_size"]
    # (head_dim, group, rows per tile): the drafter heads' launches (launch_config's defaults), both split modes.
    for D, G, rows_req in [(64, 8, 14), (64, 8, 1), (128, 8, 14), (128, 8, 1), (64, 8, 20)]:
        lc = da.launch_config(rows_req, 1, rows_req, 8 * G, 8, D, 8192, 2, __import__("torch").device("cpu"), num_splits=2)
        for split in (True, False):
            const = dict(G=G, G_PAD=lc["G_PAD"], ROWS=lc["ROWS"], HEAD_DIM=D, D_PAD=lc["D_PAD"], BLOCK_N=lc["BLOCK_N"],
                         HAS_WINDOW=False, PAGED=False, SPLIT=split, IEEE=False, UPCAST=False,
                         INTERIOR=False, PDL=True)
            print(compile_one(da._decode_attn_kernel, sig, const, div, lc["num_warps"], lc["num_stages"]))
    const = dict(G=8, G_PAD=8, ROWS=16, HEAD_DIM=64, D_PAD=64, BLOCK_N=64, HAS_WINDOW=True, PAGED=True, SPLIT=True,
                 IEEE=False, UPCAST=False, INTERIOR=False, PDL=True)                                   # sliding window over a paged cache
    print(compile_one(da._decode_attn_kernel, sig, const, div, 8, 3) + "  (window, paged)")
    print(compile_one(da._row_table_kernel, dict(req_ptr="*i64", table_ptr="*i32", n_rows="i32", max_rows="i32"),
                      dict(BLOCK=128, PDL=True), ["req_ptr", "table_ptr"]))
    print(compile_one(da._write_kv_kernel, dict(k_ptr="*bf16", v_ptr="*bf16", slot_ptr="*i64", kc_ptr="*bf16",
                                                vc_ptr="*bf16", k_stride="i32", v_stride="i32", c_stride="i32"),
                      dict(ROW=512, BLOCK=512, PDL=True), ["k_ptr", "v_ptr", "slot_ptr", "kc_ptr", "vc_ptr", "k_stride",
                                                 "v_stride", "c_stride"]))


if __name__ == "__main__":
    main()
