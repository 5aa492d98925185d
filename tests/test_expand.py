"""Input expansion: Triton kernels == PyTorch reference == a pure-Python oracle of the semantics.

On a CPU-only machine the Triton kernels run through the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); on a CUDA machine the same tests run the compiled kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pedagle_core import expand as E
from pedagle_core.expand import (PADDING_SLOT_ID, ExpandedBatch, compute_slot_mapping, expand_metadata,
                                 expand_metadata_reference, place_hidden, place_hidden_reference)
from helpers_kernels import DEVICE, kernel_module

KT = kernel_module("expand_triton")
needs_triton = pytest.mark.skipif(KT is None, reason="triton not importable")
FIELDS = list(ExpandedBatch.__dataclass_fields__)


def test_triton_kernels_available():
    """Makes a missing Triton path visible in the summary (the other tests then check the reference only)."""
    if KT is None:
        pytest.skip(f"Triton kernels cannot run on {DEVICE} (triton missing, or TRITON_INTERPRET unset on CPU)")


# --------------------------------------------------------------------------------------------------
# Oracle: a literal transcription of the semantics, one row at a time, plain Python lists.
# --------------------------------------------------------------------------------------------------


def oracle_expand(tok, pos, qsl, n_rej, nxt, K, mask_id, bt, bs, max_len, pad):
    T, B = len(tok), len(nxt)
    n_out = T + B * (K - 1)
    o_ids, o_pos, o_rej, o_mask = [None] * n_out, [None] * n_out, [None] * n_out, [None] * n_out
    o_src, o_slot, o_req = [None] * n_out, [None] * n_out, [None] * n_out
    sample, dst = [None] * (B * K), [None] * T
    for r in range(B):
        s, e = qsl[r], qsl[r + 1]
        rejected = 0 if n_rej is None else n_rej[r]
        last = e - 1 - rejected                   # last accepted target row
        n_valid = last - s
        out_start = s + r * (K - 1)
        for j in range((e - s) + K - 1):
            o = out_start + j
            live = j < n_valid + K
            masked = n_valid < j < n_valid + K
            if j < n_valid:
                o_ids[o] = tok[s + 1 + j]
            elif j == n_valid:
                o_ids[o] = nxt[r]
            elif masked:
                o_ids[o] = mask_id
            else:
                o_ids[o] = pad
            o_pos[o] = pos[s] + j if live else 0
            o_rej[o], o_mask[o], o_req[o] = not live, masked, r
            o_src[o] = s + j if (j < e - s and not masked) else -1
            p = o_pos[o]
            o_slot[o] = bt[r][p // bs] * bs + p % bs if (live and 0 <= p < max_len) else PADDING_SLOT_ID
            if n_valid <= j < n_valid + K:
                sample[r * K + (j - n_valid)] = o
            if j < e - s:
                dst[s + j] = o
    out_qsl = [qsl[i] + i * (K - 1) for i in range(B + 1)]
    out = dict(input_ids=o_ids, positions=o_pos, is_rejected=o_rej, is_masked=o_mask, sample_rows=sample,
               hidden_src=o_src, hidden_dst=dst, query_start_loc=out_qsl, slot_mapping=o_slot, request_index=o_req)
    for name, values in out.items():
        assert None not in values, f"oracle left {name} incomplete"
    return out


def oracle_place(fc, hidden_src, is_masked, mask_vec):
    rows = []
    for src, m in zip(hidden_src, is_masked):
        rows.append(mask_vec if m else (fc[src] if src >= 0 else torch.zeros_like(mask_vec)))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------
# Random steps
# --------------------------------------------------------------------------------------------------

# Index dtypes of (token_ids, positions, query_start_loc, num_rejected, next_token_ids, block_table): a few
# fixed layouts rather than every mix, so that a CUDA run compiles few kernel variants.
I32, I64 = torch.int32, torch.int64
DTYPE_LAYOUTS = st.sampled_from([
    (I64, I64, I64, I64, I64, I64),
    (I32, I32, I32, I32, I32, I32),
    (I32, I64, I32, I32, I32, I32),   # vLLM: int32 ids / qsl / block table, int64 positions
    (I64, I32, I64, I64, I64, I64),
])
HIDDEN_SIZES = st.sampled_from([1, 3, 8, 16, 24, 64, 80, 130])


@st.composite
def steps(draw, B=None, K=None, prefill=None, reject=None, q_lens=None, max_q=9, far_positions=False):
    """A random, valid step. reject: 'random' | 'none' | 'all' (None: any); q_lens: fixed lengths."""
    B = draw(st.integers(1, 6)) if B is None else B
    K = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16])) if K is None else K
    if q_lens is None:
        q_lens = draw(st.lists(st.integers(1, max_q), min_size=B, max_size=B))
    prefill = draw(st.booleans()) if prefill is None else prefill
    reject = draw(st.sampled_from(["random", "none", "all"])) if reject is None else reject
    if prefill:
        n_rej = None
    elif reject == "none":
        n_rej = [0] * B
    elif reject == "all":
        n_rej = [q - 1 for q in q_lens]
    else:
        n_rej = [draw(st.integers(0, q - 1)) for q in q_lens]

    block_size = draw(st.sampled_from([1, 2, 4, 16]))
    max_len = draw(st.integers(1, 64))
    n_blocks = -(-max_len // block_size) + draw(st.integers(0, 2))
    starts = [draw(st.integers(0, max_len + 4 if not far_positions else 4 * max_len)) for _ in range(B)]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    d_tok, d_pos, d_qsl, d_rej, d_nxt, d_bt = draw(DTYPE_LAYOUTS)

    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    T = qsl[-1]
    pos = [starts[r] + i for r in range(B) for i in range(q_lens[r])]
    tok = torch.randint(0, 150_000, (T,), generator=g).tolist()
    nxt = torch.randint(0, 150_000, (B,), generator=g).tolist()
    extra_rows, extra_cols = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    table = torch.randint(0, 5_000, (B + extra_rows, n_blocks + extra_cols), generator=g)
    if draw(st.booleans()):                      # a strided view, as a slice of a wider table
        table = table[:, :n_blocks]
    return dict(
        token_ids=torch.tensor(tok, dtype=d_tok),
        positions=torch.tensor(pos, dtype=d_pos),
        query_start_loc=torch.tensor(qsl, dtype=d_qsl),
        num_rejected=None if n_rej is None else torch.tensor(n_rej, dtype=d_rej),
        next_token_ids=torch.tensor(nxt, dtype=d_nxt),
        K=K, mask_token_id=draw(st.integers(0, 2**20)),
        block_table=table.to(d_bt), block_size=block_size, max_model_len=max_len,
        pad_token_id=draw(st.sampled_from([0, 1, 7])),
    )


def to_device(args: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def oracle_of(args: dict) -> dict:
    a = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    return oracle_expand(a["token_ids"], a["positions"], a["query_start_loc"], a["num_rejected"],
                         a["next_token_ids"], a["K"], a["mask_token_id"], a["block_table"], a["block_size"],
                         a["max_model_len"], a.get("pad_token_id", 0))


def poisoned_batch(T: int, B: int, K: int) -> ExpandedBatch:
    """Outputs filled with values no valid expansion produces, to catch unwritten elements."""
    n = T + B * (K - 1)
    full = lambda size: torch.full((size,), -12345, dtype=torch.int64, device=DEVICE)  # noqa: E731
    return ExpandedBatch(input_ids=full(n), positions=full(n),
                         is_rejected=torch.full((n,), True, device=DEVICE),
                         is_masked=torch.full((n,), True, device=DEVICE),
                         sample_rows=full(B * K), hidden_src=full(n), hidden_dst=full(T),
                         query_start_loc=full(B + 1), slot_mapping=full(n), request_index=full(n))


def assert_batch_equals(batch: ExpandedBatch, expected: dict, label: str) -> None:
    for name in FIELDS:
        got = getattr(batch, name)
        want_dtype = torch.bool if name in ("is_rejected", "is_masked") else torch.int64
        assert got.dtype == want_dtype, f"{label}.{name}: dtype {got.dtype}, expected {want_dtype}"
        assert got.device.type == DEVICE.type, f"{label}.{name}: device {got.device}"
        assert got.cpu().tolist() == expected[name], (
            f"{label}.{name} differs:\n got  {got.cpu().tolist()}\n want {expected[name]}")


def check_all_impls(args: dict, max_query_len: int | None = None) -> ExpandedBatch:
    """Reference and Triton (into poisoned outputs) both equal the oracle; returns the reference."""
    want = oracle_of(args)
    dev_args = to_device(args)
    ref = expand_metadata_reference(**dev_args)
    assert_batch_equals(ref, want, "reference")
    if KT is not None:
        T, B, K = args["token_ids"].shape[0], args["next_token_ids"].shape[0], args["K"]
        tri = KT.expand_metadata_triton(**dev_args, max_query_len=max_query_len, out=poisoned_batch(T, B, K))
        assert_batch_equals(tri, want, "triton")
    return ref


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------------
# Metadata properties
# --------------------------------------------------------------------------------------------------


@settings(max_examples=700, **SETTINGS)
@given(steps())
def test_random_batches(args):
    check_all_impls(args)


@settings(max_examples=150, **SETTINGS)
@given(steps(B=1))
def test_single_request(args):
    check_all_impls(args)


@settings(max_examples=150, **SETTINGS)
@given(steps(prefill=True, max_q=20))
def test_prefill_only(args):
    ref = check_all_impls(args)
    assert not ref.is_rejected.any()


@settings(max_examples=150, **SETTINGS)
@given(steps(prefill=False, reject="all"))
def test_all_drafts_rejected(args):
    check_all_impls(args)


@settings(max_examples=150, **SETTINGS)
@given(steps(prefill=False, reject="none"))
def test_all_drafts_accepted(args):
    ref = check_all_impls(args)
    assert not ref.is_rejected.any()


@settings(max_examples=150, **SETTINGS)
@given(steps(K=1))
def test_k1_plain_eagle(args):
    ref = check_all_impls(args)
    assert not ref.is_masked.any()
    assert ref.input_ids.shape[0] == args["token_ids"].shape[0]


@settings(max_examples=100, **SETTINGS)
@given(steps(K=16, B=3))
def test_k16(args):
    check_all_impls(args)


@settings(max_examples=150, **SETTINGS)
@given(st.integers(1, 16).flatmap(lambda K: st.integers(1, 8).flatmap(
    lambda B: steps(B=B, K=K, prefill=False, q_lens=[K + 1] * B))))
def test_decode_steps(args):
    """The shape of a steady decode step: every query has K+1 rows (last accepted + K drafts)."""
    check_all_impls(args)


@settings(max_examples=150, **SETTINGS)
@given(steps(far_positions=True))
def test_positions_reaching_max_model_len(args):
    ref = check_all_impls(args)
    beyond = ref.positions >= args["max_model_len"]
    assert (ref.slot_mapping[beyond] == PADDING_SLOT_ID).all()


@settings(max_examples=25, **SETTINGS)
@given(steps(B=3, max_q=700), st.one_of(st.none(), st.integers(1, 800)))
def test_long_segments_and_grid_hint(args, max_query_len):
    """Segments longer than one block (several programs per request); any grid hint, even a wrong
    one, only changes the grid, never the result."""
    check_all_impls(args, max_query_len=max_query_len)


@needs_triton
def test_many_programs_per_request():
    """One long prefill: the second grid axis saturates (P = 32) and programs stride over blocks."""
    T = 9_000
    args = dict(token_ids=torch.randint(0, 1000, (T,)), positions=torch.arange(T),
                query_start_loc=torch.tensor([0, T]), num_rejected=None, next_token_ids=torch.tensor([5]),
                K=4, mask_token_id=3, block_table=torch.randperm(1024).view(1, 1024), block_size=16,
                max_model_len=16_384, pad_token_id=0)
    check_all_impls(args)


_AOT_SCRIPT = """
import json, re
from pedagle_core.kernels.expand_triton import compile_for_target
facts = {}
for name, k in compile_for_target(arch=90).items():
    ptx = k.asm["ptx"]
    facts[name] = {"ld": sorted(set(re.findall(r"ld\\.global[\\w.]*", ptx))),
                   "st": sorted(set(re.findall(r"st\\.global[\\w.]*", ptx))), "cubin": len(k.asm["cubin"])}
print("FACTS" + json.dumps(facts))
"""


def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects: build every variant for sm_90 (no GPU needed)
    in a fresh process without TRITON_INTERPRET, and check the hidden placement moves 16-byte vectors."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("no ptxas for ahead-of-time compilation")
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.split("FACTS", 1)[1])
    assert len(facts) == 5 and all(f["cubin"] > 0 for f in facts.values())
    place = facts["place_hidden[bf16,BLOCK_H=1024]"]
    assert "ld.global.v4.b32" in place["ld"] and place["st"] == ["st.global.v4.b32"], place


# --------------------------------------------------------------------------------------------------
# Hidden placement
# --------------------------------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(steps(), HIDDEN_SIZES, st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       st.integers(0, 2**31 - 1))
def test_place_hidden(args, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    T = args["token_ids"].shape[0]
    fc = torch.randn(T, H, generator=g).to(dtype)
    mask_vec = torch.randn(H, generator=g).to(dtype)
    batch = expand_metadata_reference(**to_device(args))
    want = oracle_place(fc, batch.hidden_src.tolist(), batch.is_masked.tolist(), mask_vec)
    ref = place_hidden_reference(fc.to(DEVICE), batch, mask_vec.to(DEVICE))
    assert ref.dtype == dtype and torch.equal(ref.cpu(), want)
    if KT is not None:
        poison = torch.full((batch.num_rows, H), float("nan"), dtype=dtype, device=DEVICE)
        tri = KT.place_hidden_triton(fc.to(DEVICE), batch, mask_vec.to(DEVICE), out=poison)
        assert tri.data_ptr() == poison.data_ptr()
        assert torch.equal(tri.cpu(), want)            # pure copies: bitwise equal, no NaN left


@needs_triton
def test_place_hidden_strided_and_cast():
    """fc_out as a column slice (row stride > H) and a float32 mask vector cast to bf16."""
    args = dict(token_ids=torch.arange(10), positions=torch.arange(10), query_start_loc=torch.tensor([0, 4, 10]),
                num_rejected=torch.tensor([1, 3]), next_token_ids=torch.tensor([1, 2]), K=3, mask_token_id=9,
                block_table=torch.arange(8).view(2, 4), block_size=8, max_model_len=32)
    batch = expand_metadata_reference(**to_device(args))
    wide = torch.randn(10, 3000, device=DEVICE).to(torch.bfloat16)
    fc = wide[:, 100:100 + 2880]
    mask_vec = torch.randn(2880, device=DEVICE)
    ref = place_hidden_reference(fc, batch, mask_vec)
    tri = KT.place_hidden_triton(fc, batch, mask_vec)
    assert torch.equal(ref, tri)
    assert torch.equal(ref[batch.is_masked], mask_vec.to(torch.bfloat16).expand(int(batch.is_masked.sum()), -1))


# --------------------------------------------------------------------------------------------------
# Dispatch, shared helper
# --------------------------------------------------------------------------------------------------


def _small_args(**over) -> dict:
    args = dict(token_ids=torch.tensor([10, 11, 12, 13, 14]), positions=torch.tensor([3, 4, 5, 6, 0]),
                query_start_loc=torch.tensor([0, 4, 5]), num_rejected=torch.tensor([2, 0]),
                next_token_ids=torch.tensor([20, 21]), K=3, mask_token_id=99,
                block_table=torch.tensor([[1, 2], [3, 4]]), block_size=4, max_model_len=8)
    args.update(over)
    return args


def test_small_worked_example():
    """Hand-written: request 0 has 4 rows with 2 rejected, request 1 one row (prefill of 1 token)."""
    b = expand_metadata_reference(**_small_args())
    assert b.input_ids.tolist() == [11, 20, 99, 99, 0, 0, 21, 99, 99]
    assert b.positions.tolist() == [3, 4, 5, 6, 0, 0, 0, 1, 2]
    assert b.is_rejected.tolist() == [False] * 4 + [True] * 2 + [False] * 3
    assert b.is_masked.tolist() == [False, False, True, True, False, False, False, True, True]
    assert b.sample_rows.tolist() == [1, 2, 3, 6, 7, 8]
    assert b.hidden_src.tolist() == [0, 1, -1, -1, -1, -1, 4, -1, -1]
    assert b.hidden_dst.tolist() == [0, 1, 2, 3, 6]
    assert b.query_start_loc.tolist() == [0, 6, 9]
    assert b.slot_mapping.tolist() == [7, 8, 9, 10, -1, -1, 12, 13, 14]
    assert b.request_index.tolist() == [0] * 6 + [1] * 3


@needs_triton
@pytest.mark.parametrize("impl", ["auto", "torch", "triton"])
def test_public_dispatch(impl, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if DEVICE.type == "cpu" else "0")
    args = to_device(_small_args())
    want = oracle_of(_small_args())
    b = expand_metadata(**args, impl=impl)
    assert_batch_equals(b, want, impl)
    fc, mv = torch.randn(5, 6, device=DEVICE), torch.randn(6, device=DEVICE)
    assert torch.equal(place_hidden(fc, b, mv, impl=impl), place_hidden_reference(fc, b, mv))


def test_auto_without_interpreter_uses_reference(monkeypatch):
    if DEVICE.type != "cpu":
        pytest.skip("CPU dispatch rule")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    called = []
    monkeypatch.setattr(E, "expand_metadata_reference", lambda *a, **k: called.append(1) or "ref")
    assert expand_metadata(**_small_args()) == "ref" and called


def test_compute_slot_mapping():
    table = torch.tensor([[5, 6, 7], [1, 0, 2]], dtype=torch.int32)
    req = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pos = torch.tensor([0, 5, 11, 3, 4, 12, -1])
    slots = compute_slot_mapping(table, req, pos, block_size=4, max_model_len=12)
    assert slots.dtype == torch.int64
    assert slots.tolist() == [20, 25, 31, 7, 0, -1, -1]


# --------------------------------------------------------------------------------------------------
# Validation: each error names the argument and the expected value
# --------------------------------------------------------------------------------------------------


INVALID = [
    (dict(token_ids=torch.tensor([1.0, 2, 3, 4, 5])), "token_ids: expected dtype torch.int32 or torch.int64"),
    (dict(token_ids=torch.zeros(5, 1, dtype=torch.long)), r"token_ids: expected a 1-D tensor"),
    (dict(token_ids=[1, 2, 3, 4, 5]), "token_ids: expected a torch.Tensor"),
    (dict(positions=torch.tensor([3, 4, 5, 6])), r"positions: expected shape \[5\]"),
    (dict(positions=torch.tensor([3, 4, 5, 6, 0], dtype=torch.int16)), "positions: expected dtype"),
    (dict(query_start_loc=torch.tensor([0, 5])), r"query_start_loc: expected shape \[3\]"),
    (dict(query_start_loc=torch.tensor([1, 4, 5])), r"query_start_loc: expected query_start_loc\[0\] == 0"),
    (dict(query_start_loc=torch.tensor([0, 4, 6])), r"query_start_loc: expected query_start_loc\[-1\] == len"),
    (dict(query_start_loc=torch.tensor([0, 5, 5]), num_rejected=None),
     "query_start_loc: expected every query length >= 1"),
    (dict(num_rejected=torch.tensor([2])), r"num_rejected: expected shape \[2\]"),
    (dict(num_rejected=torch.tensor([4, 0])), "num_rejected: expected 0 <= num_rejected"),
    (dict(num_rejected=torch.tensor([0, 1])), "num_rejected: expected 0 <= num_rejected.*request 1"),
    (dict(num_rejected=torch.tensor([-1, 0])), "num_rejected: expected 0 <= num_rejected"),
    (dict(next_token_ids=torch.tensor([20])), r"query_start_loc: expected shape \[2\]"),
    (dict(next_token_ids=torch.tensor([], dtype=torch.long)), "next_token_ids: expected at least one request"),
    (dict(token_ids=torch.tensor([], dtype=torch.long)), "token_ids: expected at least one row"),
    (dict(K=0), "K: expected an int >= 1"),
    (dict(K=2.0), "K: expected a Python int >= 1"),
    (dict(K=True), "K: expected a Python int >= 1"),
    (dict(mask_token_id=-1), "mask_token_id: expected an int >= 0"),
    (dict(mask_token_id=None), "mask_token_id: expected a Python int >= 0"),
    (dict(pad_token_id=-3), "pad_token_id: expected an int >= 0"),
    (dict(block_size=0), "block_size: expected an int >= 1"),
    (dict(max_model_len=0), "max_model_len: expected an int >= 1"),
    (dict(block_table=torch.tensor([1, 2])), "block_table: expected a 2-D tensor"),
    (dict(block_table=torch.tensor([[1, 2]])), r"block_table: expected shape \[B >= 2"),
    (dict(max_model_len=9), "block_table: 2 blocks of block_size 4 cover 8 positions; expected >= max_model_len = 9"),
    (dict(positions=torch.zeros(5, dtype=torch.long, device="meta")), "positions: expected device cpu"),
]


@pytest.mark.parametrize("over,message", INVALID, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(INVALID)])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_invalid_arguments(over, message, impl):
    if impl == "triton" and KT is None:
        pytest.skip("triton not importable")
    args = _small_args(**over)
    fn = expand_metadata_reference if impl == "torch" else KT.expand_metadata_triton
    with pytest.raises(ValueError, match=message):
        fn(**args)


def test_invalid_impl():
    with pytest.raises(ValueError, match="impl: expected one of"):
        expand_metadata(**_small_args(), impl="cuda")
    with pytest.raises(RuntimeError, match="impl='triton' but Triton cannot run on device meta"):
        expand_metadata(**{k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in _small_args().items()},
                        impl="triton")


def test_invalid_place_hidden():
    b = expand_metadata_reference(**_small_args())
    with pytest.raises(ValueError, match=r"fc_out: expected 5 rows"):
        place_hidden_reference(torch.randn(4, 8), b, torch.randn(8))
    with pytest.raises(ValueError, match=r"fc_out: expected a floating-point tensor of shape \[T, H\]"):
        place_hidden_reference(torch.randn(5), b, torch.randn(8))
    with pytest.raises(ValueError, match=r"fc_out: expected a floating-point tensor"):
        place_hidden_reference(torch.ones(5, 8, dtype=torch.long), b, torch.randn(8))
    with pytest.raises(ValueError, match=r"mask_vec: expected shape \[8\]"):
        place_hidden_reference(torch.randn(5, 8), b, torch.randn(1, 8))
    if KT is not None:
        with pytest.raises(ValueError, match=r"mask_vec: expected shape \[8\]"):
            KT.place_hidden_triton(torch.randn(5, 8, device=DEVICE), b, torch.randn(7, device=DEVICE))


def test_invalid_slot_mapping_args():
    table = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"request_index: expected shape \(4,\)"):
        compute_slot_mapping(table, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 4, 12)
    with pytest.raises(ValueError, match="block_table: 3 blocks of block_size 4 cover 12 positions"):
        compute_slot_mapping(table, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 4, 13)
    with pytest.raises(ValueError, match="positions: expected dtype"):
        compute_slot_mapping(table, torch.zeros(4, dtype=torch.long), torch.zeros(4), 4, 12)
