"""SGLang's Triton attention backend under PEAGLE's decode draft-step graphs, on the CPU (Triton's interpreter).

Run as a script with ``TRITON_INTERPRET=1`` set before anything imports SGLang's kernels (test_cuda_graphs_triton
does): ``python triton_graph_check.py OVERRIDE [WINDOW]`` prints one JSON line (WINDOW: a sliding-window layer).

The Triton backend is SGLang's real class; only what needs a GPU or a ModelRunner is stood in for: its
constructor (attributes set here instead), the KV-index packing kernel (`Translator`: the same CSR rows, in
PyTorch). Its graph metadata code (``init_cuda_graph_state``, ``init_forward_metadata_out_graph`` at capture and
before each replay) and its extend-attention Triton kernel are SGLang's. A captured graph is stood in for by
`BakedGraph`: it keeps the metadata the capture saw (a CUDA graph bakes the kernels' pointers and grids at
capture) and re-runs the step at replay. The drafts of three decode steps of 3 requests (padded to a graph of
4) are compared with the worker's eager path on SGLang's torch-native backend. ``OVERRIDE=0`` leaves the
backend's ``num_draft_tokens`` at K+1 (SGLang's verify window) after `prepare_triton_backend`: the extend kernel
then covers K+1 of the 2K rows per request, and the drafts must differ.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


class Translator:
    """SGLang's KV index translator for a pool that does not translate: CSR rows of ``req_to_token`` prefixes."""

    is_translating = False
    window_kv_kind = None

    def __init__(self, req_to_token: torch.Tensor) -> None:
        self.req_to_token = req_to_token

    def pack_read_stream(self, plan, *, req_pool_indices, seq_lens, indptr, out, kv_start_idx=None, **_kw) -> bool:
        start = [0] * seq_lens.numel() if kv_start_idx is None else [int(x) for x in kv_start_idx]
        rows = [self.req_to_token[int(r), s:s + int(n)]
                for r, s, n in zip(req_pool_indices[:seq_lens.numel()], start, seq_lens)]
        flat = torch.cat(rows) if rows else out[:0]
        out[:flat.numel()] = flat.to(out.dtype)
        return False


def triton_backend(side, K: int):
    """SGLang's TritonAttnBackend for the drafter of ``side`` (test_drafting.SglangSide), built without a
    ModelRunner: the attributes its graph-metadata and extend paths read."""
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    cfg = side.model.pedagle_config
    rows = side.rtt.shape[0] + 1
    tb = TritonAttnBackend.__new__(TritonAttnBackend)
    i32 = dict(dtype=torch.int32)
    attrs = dict(dllm_attention=None, num_head=cfg.num_attention_heads, max_kv_splits=2, v_head_dim=int(cfg.head_dim),
                 swa_v_head_dim=None, device="cpu", lean_total_programs=1, lean_block_m=1,
                 max_context_len=side.rtt.shape[1], is_draft_runner=True, skip_prefill=False,
                 num_draft_tokens=K + 1, speculative_num_steps=K, sliding_window_size=side.model.attn.model_window,
                 use_sliding_window_kv_pool=False, _translate_kv_loc=None, req_to_token=side.rtt,
                 qo_indptr=torch.zeros(rows, **i32), kv_indptr=torch.zeros(rows, **i32),
                 window_kv_indptr=torch.zeros(rows, **i32), kv_index_translator=Translator(side.rtt), dcp_size=1,
                 page_size=1, use_dense_fp8_chunked_prefill=False, enable_deterministic=False,
                 use_verify_shared_kv=False, use_verify_splitkv=False, token_to_kv_pool=side.kv,
                 req_to_token_pool=side.rtt_pool, allow_bidirectional_attention_in_extend=False,
                 extend_attention_fwd=extend_attention_fwd)
    for k, v in attrs.items():
        setattr(tb, k, v)
    return tb


class BakedGraph:
    """A captured graph's stand-in: the backend metadata at capture time is what every replay uses."""

    def __init__(self, fn, backend) -> None:
        self.fn, self.backend = fn, backend
        self.meta = backend.forward_metadata
        fn()

    def replay(self) -> None:
        self.backend.forward_metadata = self.meta
        self.fn()

    def pool(self):
        return None


def main(override: bool, window: int | None) -> dict:
    from pedagle_backends.sglang import cuda_graphs as cg
    from pedagle_backends.sglang import layout
    from test_cuda_graphs import eager_path
    from test_drafting import SglangSide, sglang_drafter
    from tiny import MASK_ID, VOCAB, save_checkpoint, tiny_drafter

    K, B, sizes = 3, 3, [1, 2, 4]
    ckpt = save_checkpoint(tiny_drafter(seed=6, num_layers=2, window=window), Path(tempfile.mkdtemp()) / "h", "vllm")
    model = sglang_drafter(ckpt)
    side, eager = SglangSide(model, 4), SglangSide(model, 4)
    tb = triton_backend(side, K)
    cg.prepare_triton_backend(tb, K, sizes[-1])
    if not override:
        tb.num_draft_tokens = K + 1
    runner = cg.DecodeDraftGraphs(model, tb, side.rtt, K, MASK_ID, sizes, mode="graph",
                                  aux_width=int(model.drafter.fc.weight.shape[1]),
                                  aux_dtype=model.drafter.fc.weight.dtype, device="cpu")
    try:
        runner.capture(capture_fn=lambda fn, pool: BakedGraph(fn, tb))
    except cg.GraphUnsupported as e:                    # e.g. a windowed drafter where the metadata has no rail
        return {"unsupported": str(e)}
    meta = {bs: (g.meta.max_extend_len, g.meta.qo_indptr.shape[0] - 1) for bs, g in runner.graphs.items()}
    g = torch.Generator().manual_seed(3)
    n_aux = model.pedagle_config.fc_input_size
    seq_lens = torch.tensor([4, 9, 6])
    bonus, drafts = torch.randint(2, VOCAB, (B,), generator=g), torch.randint(2, VOCAB, (B, K), generator=g)
    steps = []
    for _ in range(3):
        acc = torch.randint(1, K + 2, (B,), generator=g)
        nb = torch.randint(2, VOCAB, (B,), generator=g)
        aux = torch.randn(B * (K + 1), n_aux, generator=g)
        want = eager_path(eager, layout.decode_step_input(bonus, drafts, seq_lens, acc, nb, aux), K, eager.req[:B],
                          seq_lens)
        got = runner.run(bonus, drafts, seq_lens, acc, nb, aux, side.req[:B])
        steps.append({"equal": bool(torch.equal(got, want)), "graph_bs": runner.last_bs, "got": got.tolist(),
                      "want": want.tolist(), "kv_indptr": tb.kv_indptr[:runner.last_bs + 1].tolist()})
        seq_lens, bonus, drafts = seq_lens + acc, nb, got
    return {"meta": {str(k): v for k, v in meta.items()}, "steps": steps}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1] == "1", int(sys.argv[2]) if len(sys.argv) > 2 else None)))
