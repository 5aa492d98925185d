"""The speculative-decoding helper ops of SGLang's CPU engine (sglang/kernels/ops/speculative/*), plain PyTorch.

Draft slots: request b with seq_lens[b] committed tokens owns req_to_token[row, seq_len : seq_len + topk * steps],
candidate k's steps at seq_len + k * steps + (0..steps-1).
Trees (EAGLE's draft trees; a chain is topk == 1): `retrive_next_token[b, i]` is the first child of node i,
`retrive_next_sibling[b, i]` its next sibling (-1: none); node 0 is the verified bonus token.
"""

from __future__ import annotations

import torch

from ._library import define

QLEN_ONLY_BITPACKING = 2


def assign_draft_cache_locs_contiguous(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    seq_lens: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
    topk: int,
    num_steps: int,
) -> None:
    """out_cache_loc[b * topk * steps : (b + 1) * topk * steps] = request b's draft slots."""
    width = topk * num_steps
    for b in range(seq_lens.shape[0]):
        s = int(seq_lens[b])
        out_cache_loc[b * width : (b + 1) * width] = req_to_token[int(req_pool_indices[b]), s : s + width].to(
            out_cache_loc.dtype
        )


def assign_extend_cache_locs(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """out_cache_loc = concat over b of req_to_token[req_pool_indices[b], start[b]:end[b]]."""
    offset = 0
    for b, (s, e) in enumerate(zip(start_offset.tolist(), end_offset.tolist())):
        out_cache_loc[offset : offset + e - s] = req_to_token[int(req_pool_indices[b]), s:e].to(out_cache_loc.dtype)
        offset += e - s


def fill_accept_out_cache_loc(accept_index: torch.Tensor, out_cache_loc: torch.Tensor, accept_out_cache_loc: torch.Tensor) -> None:
    """Pack the slots of accepted rows: accept_out_cache_loc[:n] = out_cache_loc[accepted indices, in order]."""
    flat = accept_index.reshape(-1)
    kept = flat[flat != -1].long()
    accept_out_cache_loc[: kept.numel()] = out_cache_loc[kept].to(accept_out_cache_loc.dtype)


def fill_bonus_tokens(accept_tokens: torch.Tensor, accept_lens: torch.Tensor, bonus_tokens: torch.Tensor, accept_stride: int) -> None:
    """bonus_tokens[b] = the last accepted token of request b (accept_lens counts it)."""
    flat = accept_tokens.reshape(-1)
    for b in range(accept_lens.shape[0]):
        bonus_tokens[b] = flat[accept_stride * b + int(accept_lens[b]) - 1]


def _parent_position(selected: list[int], parent_list_row: torch.Tensor, topk: int, i: int) -> int | None:
    """Tree node (1-based position among selected drafts; 0 = root) of the parent of draft i, None if absent."""
    parent_tb = selected[i] // topk
    if parent_tb == 0:
        return 0
    parent_token = int(parent_list_row[parent_tb])
    for pos, sel in enumerate(selected):
        if sel == parent_token:
            return pos + 1
    return None


def build_tree_kernel_efficient(
    parent_list: torch.Tensor,
    selected_index: torch.Tensor,
    verified_seq_len: torch.Tensor,
    tree_mask: torch.Tensor,
    positions: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    topk: int,
    depth: int,
    draft_token_num: int,
    tree_mask_mode: int,
) -> None:
    """EAGLE draft tree -> verify metadata (positions, retrieve links, tree mask), in place.

    selected_index [B, n-1]: the flat draft ids chosen for the tree; id // topk is the parent's flat id in
    parent_list [B, *] (0 = the root). Node x (0 = root, i + 1 = selected draft i) sits at position
    seq_len + depth(x). tree_mask: FULL_MASK (0) rows of (seq_len + n) per node, the prefix visible;
    QLEN_ONLY (1) rows of n per node. Links follow the GPU kernel's order: children are linked last-first.
    """
    if tree_mask_mode == QLEN_ONLY_BITPACKING:
        raise NotImplementedError(
            "tree_mask_mode QLEN_ONLY_BITPACKING is not implemented in pedagle's CPU test kernels: "
            "build_tree_kernel_efficient_cpu"
        )
    n = draft_token_num
    seq_lens = verified_seq_len.tolist()
    prefix_sum = 0
    for b, seq_len in enumerate(seq_lens):
        selected = [int(x) for x in selected_index[b, : n - 1].tolist()]
        parents = parent_list[b] if parent_list.dim() > 1 else parent_list
        base = b * n
        positions[base] = seq_len
        retrive_index[b, 0] = base
        for i in range(n - 1, 0, -1):
            retrive_index[b, i] = base + i
            parent = _parent_position(selected, parents, topk, i - 1)
            if parent is None:
                continue
            first_child = int(retrive_next_token[b, parent])
            retrive_next_token[b, parent] = i
            if first_child != -1:
                retrive_next_sibling[b, i] = first_child
        # tree mask and positions: node x sees itself and its ancestors
        row_len = seq_len + n if tree_mask_mode == 0 else n
        block = (n * n * b + prefix_sum * n) if tree_mask_mode == 0 else n * n * b
        for x in range(n):
            row = block + x * row_len
            prefix = seq_len if tree_mask_mode == 0 else 0
            tree_mask[row + prefix : row + prefix + n] = False
            tree_mask[row + prefix] = True  # the root (FULL_MASK's prefix columns are left as allocated)
            if x == 0:
                continue
            node, level = x - 1, 0
            for _ in range(depth):
                level += 1
                tree_mask[row + prefix + 1 + node] = True
                parent = _parent_position(selected, parents, topk, node)
                if parent is None or parent == 0:
                    break
                node = parent - 1
            positions[base + x] = seq_len + level
        prefix_sum += seq_len


def verify_tree_greedy(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
) -> None:
    """Greedy tree verify, in place: walk from the root, at each level take the child whose draft token equals the
    target's argmax at the current node; stop when none does.

    candidates [B, n] draft tokens per node; target_predict [B, n] the target's argmax per node. Writes
    accept_index [B, steps] (retrieve indices of accepted nodes, root first; untouched beyond), accept_token_num
    [B] (accepted drafts, root excluded) and predicts[flat node] = the target token after each accepted node.
    """
    n, steps = candidates.shape[1], accept_index.shape[1]
    target_flat = target_predict.reshape(-1)
    for b in range(candidates.shape[0]):
        last = int(retrive_index[b, 0])
        accept_index[b, 0] = last
        accepted = 0
        node = 0
        for j in range(1, steps):
            node = int(retrive_next_token[b, node])
            target = int(target_flat[last])
            while node != -1 and int(candidates[b, node]) != target:
                node = int(retrive_next_sibling[b, node])
            if node == -1:
                break
            predicts[last] = target
            last = int(retrive_index[b, node])
            accepted += 1
            accept_index[b, accepted] = last
        accept_token_num[b] = accepted
        predicts[last] = target_flat[last]


def build_draft_decode_metadata(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    topk: int,
    num_steps: int,
    pool_len: int,
) -> torch.Tensor:
    """The req_to_token table of the multi-step draft decode: [B * topk, pool_len], one row per candidate.

    Row b * topk + k = request b's prefix slots [0, seq_len) followed by candidate k's draft slots
    (seq_len + k * steps + i at position seq_len + i).
    """
    bs = seq_lens.shape[0]
    out = torch.zeros(bs * topk, pool_len, dtype=req_to_token.dtype)
    for b in range(bs):
        s = int(seq_lens[b])
        row = req_to_token[int(req_pool_indices[b])]
        for k in range(topk):
            r = b * topk + k
            out[r, :s] = row[:s]
            out[r, s : s + num_steps] = row[s + k * num_steps : s + (k + 1) * num_steps]
    return out


assign_draft_cache_locs_contiguous_cpu = define(
    "assign_draft_cache_locs_contiguous_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor seq_lens, "
    "Tensor(a!) out_cache_loc, int pool_len, int topk, int num_steps) -> ()",
    assign_draft_cache_locs_contiguous,
)
assign_extend_cache_locs_cpu = define(
    "assign_extend_cache_locs_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor start_offset, "
    "Tensor end_offset, Tensor(a!) out_cache_loc, int pool_len) -> ()",
    assign_extend_cache_locs,
)
fill_accept_out_cache_loc_cpu = define(
    "fill_accept_out_cache_loc_cpu(Tensor accept_index, Tensor out_cache_loc, Tensor(a!) accept_out_cache_loc) -> ()",
    fill_accept_out_cache_loc,
)
fill_bonus_tokens_cpu = define(
    "fill_bonus_tokens_cpu(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens, int accept_stride) -> ()",
    fill_bonus_tokens,
)
build_tree_kernel_efficient_cpu = define(
    "build_tree_kernel_efficient_cpu(Tensor parent_list, Tensor selected_index, Tensor verified_seq_len, "
    "Tensor(a!) tree_mask, Tensor(b!) positions, Tensor(c!) retrive_index, Tensor(d!) retrive_next_token, "
    "Tensor(e!) retrive_next_sibling, int topk, int depth, int draft_token_num, int tree_mask_mode) -> ()",
    build_tree_kernel_efficient,
)
verify_tree_greedy_cpu = define(
    "verify_tree_greedy_cpu(Tensor(a!) predicts, Tensor(b!) accept_index, Tensor(c!) accept_token_num, "
    "Tensor candidates, Tensor retrive_index, Tensor retrive_next_token, Tensor retrive_next_sibling, "
    "Tensor target_predict) -> ()",
    verify_tree_greedy,
)
build_draft_decode_metadata_cpu = define(
    "build_draft_decode_metadata_cpu(Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, int topk, "
    "int num_steps, int pool_len) -> Tensor",
    build_draft_decode_metadata,
)
