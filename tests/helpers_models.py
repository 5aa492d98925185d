"""Tiny random-weight targets and drafters for tests (shared by every test module).

Targets: one tiny Hugging Face causal LM per supported family (``FAMILIES``), built in memory from a
seed (``tiny_target``) or saved to a directory (``save_tiny_target``). Drafters: ``tiny_drafter`` builds
a random `Drafter` that fits a target (``target_hidden_size``/``vocab_size``/``aux_layer_ids`` taken
from it, ``mask_token_id`` set, random ``d2t`` offsets when ``draft_vocab_size < vocab``).

For acceptance paths that random drafters never reach, ``bigram_target`` + ``oracle_drafter`` give a
target whose greedy choice is (almost) a function of the current token and a drafter that knows that
function for a chosen fraction of the tokens, so greedy drafts are often right, sometimes wrong.
"""

from __future__ import annotations

import pytest
import torch

from pedagle_core.config import DrafterConfig
from pedagle_core.model import Drafter

FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe", "gpt_oss")


@pytest.fixture(scope="module")
def fast_cpu():
    """For engine-level tests of tiny models: one intra-op thread (the test machine's cores are shared)
    and the plain-PyTorch expansion instead of the Triton interpreter that conftest enables on CPU
    (the kernels have their own tests). Use ``pytestmark = pytest.mark.usefixtures("fast_cpu")`` after
    importing this fixture."""
    import contextlib

    from helpers_kernels import core_torch_path

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with contextlib.nullcontext() if torch.cuda.is_available() else core_torch_path():
        yield
    torch.set_num_threads(n)

VOCAB = 96
MASK_ID = 1


def target_config(family: str = "llama", vocab_size: int = VOCAB, num_layers: int = 4, hidden: int = 32,
                  max_position_embeddings: int = 256):
    """A tiny transformers config of one family (random-init friendly sizes)."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(**common)
    if family == "qwen2":
        from transformers import Qwen2Config
        # sliding window on the upper layers (max_window_layers) so the window path is exercised
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=5, max_window_layers=2)
    if family == "qwen3":
        from transformers import Qwen3Config
        return Qwen3Config(**common, use_sliding_window=True, layer_types=["full_attention", "sliding_attention"] * (num_layers // 2),
                           sliding_window=4)
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        return Qwen3MoeConfig(**common, moe_intermediate_size=hidden, num_experts=4, num_experts_per_tok=2,
                              decoder_sparse_step=1, mlp_only_layers=[])
    if family == "gpt_oss":
        from transformers import GptOssConfig
        common = {k: v for k, v in common.items()}
        return GptOssConfig(**common, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                            rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                             "truncate": False, "original_max_position_embeddings": 64,
                                             "rope_theta": 10000.0})
    raise ValueError(f"family = {family!r}; expected one of {FAMILIES}")


def tiny_target(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float64, **kw):
    """A random tiny HF causal LM of ``family`` (eval mode). GPT-OSS sinks are re-drawn non-zero."""
    from transformers import AutoModelForCausalLM

    cfg = target_config(family, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.normal_(0.0, 1.0)
            elif p.dim() >= 2 and "embed" not in name:
                p.normal_(0.0, 0.08)                 # larger than HF's init: less peaked-at-ties logits
    if dtype == torch.float64:                       # grouped_mm experts kernels have no float64
        model.config._experts_implementation = "eager"
    return model.to(dtype).eval()


def save_tiny_target(path, family: str = "llama", seed: int = 0, **kw) -> str:
    model = tiny_target(family, seed, dtype=torch.float32, **kw)
    model.save_pretrained(str(path))
    return str(path)


def tiny_drafter(target, seed: int = 0, draft_vocab_size: int | None = None, num_layers: int = 1,
                 aux_layer_ids=(1, 2, 3), hidden: int = 32, parallel_depth: int = 8, heads: int = 4,
                 kv_heads: int = 2, head_dim: int = 8, dtype: torch.dtype | None = None, **cfg_kw) -> Drafter:
    """A random `Drafter` that fits ``target`` (an HF model)."""
    tc = target.config
    cfg = DrafterConfig(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                        num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=2 * hidden,
                        vocab_size=tc.vocab_size, draft_vocab_size=draft_vocab_size,
                        target_hidden_size=tc.hidden_size, aux_layer_ids=aux_layer_ids,
                        mask_token_id=MASK_ID, parallel_depth=parallel_depth,
                        max_position_embeddings=tc.max_position_embeddings, **cfg_kw)
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        d.mask_hidden.copy_(torch.randn(d.mask_hidden.shape, generator=g))
        if cfg.draft_vocab_size < cfg.vocab_size:    # random subset of target ids, stored as offsets
            ids = torch.randperm(cfg.vocab_size, generator=g)[: cfg.draft_vocab_size].sort().values
            d.d2t.copy_(ids - torch.arange(cfg.draft_vocab_size))
    return d.to(dtype or next(target.parameters()).dtype).eval()


# ------------------------------------------------------------------------------------ oracle pair
def bigram_target(family: str = "llama", seed: int = 0, layer_scale: float = 0.02, attractor: int = 2,
                  pull: float = 0.8, dtype: torch.dtype = torch.float64, **kw):
    """A tiny target whose greedy next token is (almost always) ``succ[current token]``.

    Every layer's output projections are scaled by ``layer_scale``, so the residual stream is close to
    the current token's embedding; context still nudges the logits, so greedy output occasionally
    departs from the bigram map. Token ``attractor`` is made a fixed point (succ[a] == a) that a share
    of the other tokens (growing with ``pull``) also lead to, so generations often settle into runs
    of it: the regime where every parallel MASK-slot draft can be right.
    Returns (model, succ [V] the bigram greedy map).
    """
    model = tiny_target(family, seed, dtype=dtype, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj", "down_proj.weight")):
                p.mul_(layer_scale)
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(seed + 1)).to(emb.dtype))
        h = model.get_decoder().norm(emb)                                 # [V, H] ~ final hidden of token v
        head = model.get_output_embeddings().weight
        head[attractor] = pull * h[attractor] / h[attractor].norm()
        succ = model.get_output_embeddings()(h).argmax(-1)                # [V]
    assert int(succ[attractor]) == attractor
    return model, succ


def oracle_drafter(target, succ: torch.Tensor, accuracy: float = 0.8, seed: int = 0, mask_draft: int | None = 2,
                   **kw) -> Drafter:
    """A drafter whose greedy draft after input token t is ``succ[t]`` for a fraction ``accuracy`` of the
    tokens (and a wrong token for the others); MASK slots (token ``MASK_ID``) draft ``mask_draft``
    (the target's attractor token by default).

    Construction: a 1-layer qwen3-style head (sliding windows need it) with window 1 (each row attends to itself only), the incoming
    hidden ignored (fc = 0, and hidden_norm = 0 with norm_before_residual, so neither the target's nor a
    fed-back hidden reaches the residual), v_proj reading the token-embedding half only, MLP off; the final hidden
    is then a function of the row's token, and lm_head is fitted by least squares to the wanted map.
    Autoregressive drafts and the first (bonus-slot) parallel draft follow the map; MASK slots do not.
    """
    V = target.config.vocab_size
    hidden = kw.pop("hidden", 128)
    d = tiny_drafter(target, seed=seed, hidden=hidden, heads=4, kv_heads=4, head_dim=32,  # values span 128 dims
                     architecture="qwen3", layer_types=["sliding_attention"], sliding_window=1,
                     norm_before_residual=True, **kw)
    g = torch.Generator().manual_seed(seed + 7)
    want = succ.clone()
    wrong = torch.rand(V, generator=g) >= accuracy
    want[wrong] = (succ[wrong] + 1 + torch.randint(0, V - 1, (int(wrong.sum()),), generator=g)) % V
    if mask_draft is not None:
        want[MASK_ID] = mask_draft
    H = d.config.hidden_size
    dt = d.fc.weight.dtype
    with torch.no_grad():
        d.fc.weight.zero_()
        layer = d.layers[0]
        layer.hidden_norm.weight.zero_()          # with norm_before_residual: residual = hidden_norm(h) = 0
        layer.self_attn.v_proj.weight[:, H:] = 0                          # values from the embedding half only
        layer.mlp.down_proj.weight.zero_()
        ids = torch.arange(V)
        # final hidden of a row with token t (residual is 0): norm(post_attention_layernorm(o_proj(v)))
        e = layer.input_layernorm(d.embed_tokens(ids))
        v = layer.self_attn.v_proj(torch.cat([e, torch.zeros_like(e)], -1))        # [V, n_kv*D]
        rep = layer.self_attn.n_heads // layer.self_attn.n_kv
        v = v.view(V, layer.self_attn.n_kv, -1).repeat_interleave(rep, dim=1).reshape(V, -1)
        x = layer.self_attn.o_proj(v)
        x, res = layer.post_attention_layernorm(x, torch.zeros_like(x))
        out, _ = d.norm(torch.zeros_like(x), res)                                  # [V, H]
        assert d.config.draft_vocab_size == V, "oracle_drafter needs the full vocabulary"
        Y = torch.full((V, V), -4.0, dtype=torch.float64)
        Y[ids, want] = 4.0
        W = torch.linalg.lstsq(out.double(), Y).solution.T                         # [V, H]
        d.lm_head.weight.copy_(W.to(dt))
        assert bool((d.lm_head(out).argmax(-1) == want).all()), "oracle lm_head fit failed (raise hidden)"
    return d
