"""Checkpoint formats: reading an independently written vLLM-format head, drafting with it against an
independent forward, round trips vLLM -> pedagle -> speculators -> vLLM, sharded files, targets, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_formats import (AUX_IDS, DRAFT_VOCAB, H, HT, MASK_ID, N_AUX, THETA, VOCAB, published_config,
                             published_weights, reference_parallel_drafts, write_checkpoint, write_published_head)
from pedagle_core.attention import ContiguousKVCache
from pedagle_core.config import DrafterConfig
from pedagle_core.draft import StepInput, draft_autoregressive, draft_parallel
from pedagle_core.formats import (convert, describe, detect_format, load_drafter, read_config,
                                  save_drafter)
from pedagle_core.formats import cli as formats_cli
from pedagle_core.model import Drafter

PROMPT = [5, 17, 99, 3, 64, 8, 120]
BONUS = 42
K = 5


def step_for(prompt: list[int], aux: torch.Tensor, bonus: int) -> StepInput:
    n = len(prompt)
    return StepInput(token_ids=torch.tensor(prompt), positions=torch.arange(n), query_start_loc=torch.tensor([0, n]),
                     num_rejected=None, next_token_ids=torch.tensor([bonus]), aux_hidden=aux)


def cache_for(drafter: Drafter) -> ContiguousKVCache:
    c = drafter.config
    return ContiguousKVCache(c.num_hidden_layers, 1, 64, c.num_key_value_heads, c.head_dim,
                             dtype=drafter.fc.weight.dtype)


def drafts(drafter: Drafter, aux: torch.Tensor, k: int = K, prompt=PROMPT, bonus=BONUS) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "K exceeds the trained depth" for heads that record none
        cache = cache_for(drafter).for_requests(torch.tensor([0]))
        out = draft_parallel(drafter, step_for(prompt, aux, bonus), k, cache)
    return out.token_ids[0]


def aux_for(seed: int = 1, n: int = len(PROMPT), width: int = N_AUX * HT) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def tensors_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def config_of(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())


@pytest.fixture
def published(tmp_path):
    path, w, embed = write_published_head(tmp_path / "published")
    return path, w, embed


# ---------------------------------------------------------------------------------- independent head
def test_published_head_config_is_read(published):
    path, _, _ = published
    cfg, fmt = read_config(path)
    assert fmt == "vllm" == detect_format(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.draft_vocab_size) == (H, 2, VOCAB, DRAFT_VOCAB)
    assert cfg.aux_layer_ids == tuple(AUX_IDS) and cfg.n_aux == N_AUX and cfg.target_hidden_size == HT
    assert cfg.mask_token_id == MASK_ID
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": THETA}
    assert cfg.has_embed_tokens is False and cfg.has_lm_head is True
    assert cfg.parallel_depth == 1                     # published heads record no trained depth
    assert cfg.norm_before_residual is False and cfg.architecture == "llama"


def test_published_head_loads_with_its_tensors(published):
    path, w, embed = published
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # t2d and layers.1.hidden_norm are dropped silently
        d = load_drafter(path, target={"embed_tokens.weight": embed}, mode="parallel")
    sd = d.state_dict()
    assert torch.equal(sd["layers.0.self_attn.q_proj.weight"], w["midlayer.self_attn.q_proj.weight"])
    assert torch.equal(sd["layers.0.hidden_norm.weight"], w["midlayer.hidden_norm.weight"])
    assert torch.equal(sd["layers.1.mlp.down_proj.weight"], w["layers.1.mlp.down_proj.weight"])
    assert torch.equal(sd["mask_hidden"], w["mask_hidden"].reshape(1, 1, -1))
    assert torch.equal(sd["d2t"], w["d2t"]) and sd["d2t"].dtype == torch.int64
    assert torch.equal(sd["embed_tokens.weight"], embed)
    assert d.fc.weight.dtype == torch.float32 and not hasattr(d.layers[1], "hidden_norm")


def test_parallel_drafts_equal_independent_forward(published):
    path, w, embed = published
    d = load_drafter(path, target={"embed_tokens.weight": embed}, mode="parallel")
    for seed, k in ((1, K), (2, 3), (3, 1)):
        aux = aux_for(seed)
        ref, margins = reference_parallel_drafts(w, embed, PROMPT, aux, BONUS, k)
        assert margins.min() > 1e-3, "fixture has a near-tie; pick another seed"
        got = drafts(d, aux, k)
        assert got.tolist() == ref.tolist()
        assert all(0 <= t < VOCAB for t in got.tolist())
    # the drafts really depend on mask_hidden (so the check above covers it)
    with torch.no_grad():
        d.mask_hidden.mul_(-3.0)
    ref = reference_parallel_drafts(w, embed, PROMPT, aux_for(1), BONUS, K)[0]
    assert drafts(d, aux_for(1)).tolist() != ref.tolist()


def test_sharded_checkpoint_loads_identically(tmp_path, published):
    path, w, embed = published
    sharded, _, _ = write_published_head(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    a = load_drafter(path, target={"embed_tokens.weight": embed})
    b = load_drafter(sharded, target={"embed_tokens.weight": embed})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert drafts(b, aux_for()).tolist() == drafts(a, aux_for()).tolist()
    info = describe(sharded)
    assert {t["file"] for t in info["tensors"]} == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}


def test_model_prefix_and_layer0_names_are_accepted(tmp_path, published):
    _, w, embed = published
    renamed = {}
    for k, v in w.items():
        k = k.replace("midlayer.", "layers.0.")
        renamed[k if k.startswith("lm_head") else "model." + k] = v
    write_checkpoint(tmp_path / "prefixed", published_config(), renamed)
    d = load_drafter(tmp_path / "prefixed", target={"embed_tokens.weight": embed})
    assert drafts(d, aux_for()).tolist() == reference_parallel_drafts(w, embed, PROMPT, aux_for(), BONUS, K)[0].tolist()


def test_target_directory_supplies_embeddings(tmp_path, published):
    path, w, embed = published
    tgt = tmp_path / "target"
    write_checkpoint(tgt, {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
                           "hidden_size": H, "tie_word_embeddings": False},
                     {"model.embed_tokens.weight": embed, "lm_head.weight": torch.randn(VOCAB, H),
                      "model.norm.weight": torch.ones(H)})
    d = load_drafter(path, target=tgt)
    assert torch.equal(d.embed_tokens.weight, embed)
    assert drafts(d, aux_for()).tolist() == reference_parallel_drafts(w, embed, PROMPT, aux_for(), BONUS, K)[0].tolist()


def test_tied_target_supplies_lm_head_for_full_vocab_head(tmp_path):
    cfg = DrafterConfig(hidden_size=H, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        intermediate_size=48, vocab_size=VOCAB, mask_token_id=MASK_ID, parallel_depth=3,
                        aux_layer_ids=(1, 2, 3), has_embed_tokens=False, has_lm_head=False)
    d = random_drafter(cfg)
    save_drafter(d, tmp_path / "head")
    assert not {"embed_tokens.weight", "lm_head.weight", "d2t", "t2d"} & set(tensors_of(tmp_path / "head"))
    embed = torch.randn(VOCAB, H)
    write_checkpoint(tmp_path / "tied", {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": H,
                                         "tie_word_embeddings": True}, {"model.embed_tokens.weight": embed})
    got = load_drafter(tmp_path / "head", target=tmp_path / "tied")
    assert torch.equal(got.lm_head.weight, embed) and torch.equal(got.embed_tokens.weight, embed)
    assert describe(tmp_path / "head")["missing_shared_weights"] == ["embed_tokens.weight", "lm_head.weight"]


def test_transformers_model_as_target(published):
    from transformers import LlamaConfig, LlamaForCausalLM

    path, w, embed = published
    target = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2))
    d = load_drafter(path, target=target)
    assert torch.equal(d.embed_tokens.weight, target.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------- round trips
def random_drafter(cfg: DrafterConfig, seed: int = 0) -> Drafter:
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.endswith("norm.weight") or ".fc_norm." in name or name.startswith("fc_norm"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        if cfg.draft_vocab_size < cfg.vocab_size:
            ids = torch.randperm(cfg.vocab_size, generator=g)[: cfg.draft_vocab_size].sort().values
            d.d2t.copy_(ids - torch.arange(cfg.draft_vocab_size))
    return d


def test_roundtrip_vllm_pedagle_speculators_vllm(tmp_path, published):
    path, w, embed = published
    d0 = load_drafter(path, target={"embed_tokens.weight": embed})
    aux = aux_for(7)
    expected = drafts(d0, aux).tolist()

    a = tmp_path / "a_vllm"
    save_drafter(d0, a)                                       # pedagle -> canonical vLLM
    s = tmp_path / "s_spec"
    convert(a, s, to="speculators", verifier_name_or_path="org/tiny-target")
    b = tmp_path / "b_vllm"
    convert(s, b, to="vllm")
    s2 = tmp_path / "s2_spec"
    save_drafter(d0, s2, format="speculators", verifier_name_or_path="org/tiny-target")

    assert [detect_format(p) for p in (a, s, b, s2)] == ["vllm", "speculators", "vllm", "speculators"]
    configs = [read_config(p)[0] for p in (a, s, b, s2)]
    assert all(c == d0.config for c in configs)
    cb = config_of(b)
    assert cb["pedagle"].pop("verifier_name_or_path") == "org/tiny-target"   # picked up on the way
    assert config_of(a) == cb                                 # vLLM -> speculators -> vLLM: same config
    ta, ts, tb, ts2 = (tensors_of(p) for p in (a, s, b, s2))
    assert set(ta) == set(tb) == set(ts) == set(ts2)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype == ts[name].dtype and torch.equal(ta[name], tb[name])
        assert torch.equal(ta[name], ts[name]) and torch.equal(ts[name], ts2[name])
    # and the published head's own tensors survive unchanged
    assert torch.equal(ta["layers.0.mlp.up_proj.weight"], w["midlayer.mlp.up_proj.weight"])
    assert torch.equal(ta["d2t"], w["d2t"]) and torch.equal(ta["t2d"], w["t2d"])
    for p in (a, s, b, s2):
        assert drafts(load_drafter(p, target={"embed_tokens.weight": embed}), aux).tolist() == expected


def test_written_vllm_config_is_what_vllm_reads(tmp_path, published):
    path, _, embed = published
    d = load_drafter(path, target={"embed_tokens.weight": embed})
    save_drafter(d, tmp_path / "out")
    c = config_of(tmp_path / "out")
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert c["mask_token_id"] == c["ptd_token_id"] == MASK_ID
    assert c["eagle_aux_hidden_state_layer_ids"] == c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == AUX_IDS
    assert c["num_aux_hidden_states"] == N_AUX and c["draft_vocab_size"] == DRAFT_VOCAB
    assert c["target_hidden_size"] == HT
    t = tensors_of(tmp_path / "out")
    assert "embed_tokens.weight" not in t and not any(k.startswith("midlayer.") for k in t)
    assert t["mask_hidden"].shape == (1, 1, N_AUX * HT) and t["mask_hidden"].view(1, -1).shape == (1, N_AUX * HT)
    assert t["d2t"].dtype == torch.int64 and t["t2d"].dtype == torch.bool and t["t2d"].sum() == DRAFT_VOCAB
    # transformers parses it as a plain Llama config carrying the EAGLE-3 extras
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(tmp_path / "out")
    assert type(hf).__name__ == "LlamaConfig" and hf.num_hidden_layers == 2
    assert hf.rope_parameters["rope_theta"] == THETA and hf.ptd_token_id == MASK_ID


VARIANTS = {
    "qwen3_sliding_bias_normfc": dict(architecture="qwen3", layer_types=["full_attention", "sliding_attention"],
                                      sliding_window=3, attention_bias=True, norm_before_fc=True,
                                      norm_before_residual=True, draft_vocab_size=40,
                                      rope_parameters={"rope_type": "yarn", "rope_theta": 20000.0, "factor": 2.0,
                                                       "original_max_position_embeddings": 64}),
    "llama3_rope_fcnorm_normout_2aux": dict(aux_layer_ids=(2, 7), rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, fc_norm=True, norm_output=True,
        mlp_bias=True, has_embed_tokens=True, target_hidden_size=24),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_roundtrip_variants(tmp_path, variant):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              intermediate_size=40, vocab_size=80, mask_token_id=79, parallel_depth=6, aux_layer_ids=(1, 2, 3),
              max_position_embeddings=128, rms_norm_eps=1e-5)
    kw.update(VARIANTS[variant])
    cfg = DrafterConfig(**kw)
    d0 = random_drafter(cfg, seed=3)
    prompt, bonus = [4, 9, 33, 60, 2, 11], 70
    aux = aux_for(5, len(prompt), cfg.fc_input_size)
    expected = drafts(d0, aux, 4, prompt, bonus).tolist()
    target = None if cfg.has_embed_tokens else {"embed_tokens.weight": d0.embed_tokens.weight.detach()}

    a, s, b = tmp_path / "a", tmp_path / "s", tmp_path / "b"
    save_drafter(d0, a, verifier_name_or_path="org/t")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(a, s, to="speculators")                       # the verifier name comes from a's config
    vllm_blind = cfg.fc_norm or cfg.norm_output                # vLLM's peagle reader drops these two flags
    assert any("fc_norm" in str(x.message) for x in caught) == vllm_blind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(s, b, to="vllm")
        cfgs = [read_config(p)[0] for p in (a, s, b)]
    assert all(c == cfg for c in cfgs)
    assert config_of(a) == config_of(b)
    ta, ts, tb = tensors_of(a), tensors_of(s), tensors_of(b)
    assert set(ta) == set(ts) == set(tb)
    assert all(torch.equal(ta[n], ts[n]) and torch.equal(ta[n], tb[n]) for n in ta)
    for p in (a, s, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = drafts(load_drafter(p, target=target, mode="parallel"), aux, 4, prompt, bonus).tolist()
        assert got == expected
    # transformers reads the written rope / sliding settings the same way
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(a)
    for key, value in cfg.rope_parameters.items():
        assert hf.rope_parameters[key] == value
    if cfg.layer_types:
        assert hf.layer_types == cfg.layer_types and hf.sliding_window == cfg.sliding_window


def test_dtype_cast_on_save_and_load(tmp_path, published):
    path, _, embed = published
    d = load_drafter(path, target={"embed_tokens.weight": embed}, dtype=torch.bfloat16)
    assert d.fc.weight.dtype == torch.bfloat16 and d.d2t.dtype == torch.int64 and d.inv_freq.dtype == torch.float32
    save_drafter(d, tmp_path / "bf16")
    t = tensors_of(tmp_path / "bf16")
    assert t["fc.weight"].dtype == torch.bfloat16 and t["d2t"].dtype == torch.int64
    assert config_of(tmp_path / "bf16")["torch_dtype"] == "bfloat16"
    again = load_drafter(tmp_path / "bf16", target={"embed_tokens.weight": embed})   # default: stored dtype
    assert again.fc.weight.dtype == torch.bfloat16
    convert(path, tmp_path / "half", to="vllm", dtype=torch.float16)
    assert tensors_of(tmp_path / "half")["fc.weight"].dtype == torch.float16


def test_plain_eagle3_head_autoregressive_mode(tmp_path):
    w, embed = published_weights(4)
    w = {k: v for k, v in w.items() if k != "mask_hidden"}
    conf = published_config()
    del conf["ptd_token_id"]
    write_checkpoint(tmp_path / "eagle3", conf, w)
    d = load_drafter(tmp_path / "eagle3", target={"embed_tokens.weight": embed}, mode="autoregressive")
    assert d.config.mask_token_id is None and d.config.parallel_depth == 1
    out = draft_autoregressive(d, step_for(PROMPT, aux_for(), BONUS), 3, cache_for(d).for_requests(torch.tensor([0])))
    assert out.token_ids.shape == (1, 3)
    assert describe(tmp_path / "eagle3")["modes"] == ["autoregressive"]
    # writing it keeps it a plain EAGLE-3 head in both formats
    save_drafter(d, tmp_path / "e3v")
    save_drafter(d, tmp_path / "e3s", format="speculators", verifier_name_or_path="t")
    assert "mask_hidden" not in tensors_of(tmp_path / "e3v") and "ptd_token_id" not in config_of(tmp_path / "e3v")
    assert config_of(tmp_path / "e3s")["speculators_model_type"] == "eagle3"
    assert read_config(tmp_path / "e3s")[0] == read_config(tmp_path / "e3v")[0]


def test_half_peagle_head_loads_autoregressive_in_auto_mode(tmp_path):
    w, embed = published_weights(5)
    del w["mask_hidden"]
    write_checkpoint(tmp_path / "half", published_config(), w)
    with pytest.warns(UserWarning, match="mask_hidden"):
        d = load_drafter(tmp_path / "half", target={"embed_tokens.weight": embed})
    assert d.config.mask_token_id is None and d.config.parallel_depth == 1


def test_mask_token_precedence_follows_vllm(tmp_path):
    w, _ = published_weights()
    write_checkpoint(tmp_path / "p", published_config(pard_token=100, dflash_config={"mask_token_id": 90},
                                                      mask_token_id=None), w)
    with pytest.warns(UserWarning, match="'dflash_config.mask_token_id' = 90 disagrees with pard_token = 100"):
        cfg, _ = read_config(tmp_path / "p")
        info = describe(tmp_path / "p")
    assert cfg.mask_token_id == 90 and info["mask_token"]["source"] == "dflash_config.mask_token_id"
    write_checkpoint(tmp_path / "q", published_config(pard_token=100, dspark_noise_token_id=101), w)
    with pytest.warns(UserWarning, match="disagrees"):
        assert read_config(tmp_path / "q")[0].mask_token_id == 101


def test_speculators_checkpoint_written_independently(tmp_path, published):
    _, w, embed = published
    tensors = {k.replace("midlayer.", "layers.0."): v for k, v in w.items() if not k.startswith("layers.1.hidden_norm")}
    tensors["verifier_lm_head.weight"] = torch.randn(DRAFT_VOCAB, H)
    tensors["embed_tokens.weight"] = embed
    conf = {
        "architectures": ["PEagleSpeculator"], "speculators_model_type": "peagle",
        "transformer_layer_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": H,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "head_dim": 8, "intermediate_size": 48, "rms_norm_eps": 1e-5,
                                     "rope_theta": THETA, "max_position_embeddings": 256},
        "draft_vocab_size": DRAFT_VOCAB, "target_hidden_size": HT, "eagle_aux_hidden_state_layer_ids": [5, 1, 3],
        "mask_token_id": MASK_ID, "embed_requires_grad": True,
        "speculators_config": {"algorithm": "peagle", "default_proposal_method": "greedy",
                               "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 7}],
                               "verifier": {"name_or_path": "org/verifier", "architectures": ["LlamaForCausalLM"]}},
    }
    write_checkpoint(tmp_path / "spec", conf, tensors)
    cfg, fmt = read_config(tmp_path / "spec")
    assert fmt == "speculators" and cfg.parallel_depth == 7 and cfg.aux_layer_ids == (1, 3, 5)
    assert cfg.norm_before_residual is False and cfg.has_embed_tokens
    d = load_drafter(tmp_path / "spec", mode="parallel")      # own embeddings: no target needed
    ref = reference_parallel_drafts(w, embed, PROMPT, aux_for(), BONUS, K)[0]
    assert drafts(d, aux_for()).tolist() == ref.tolist()
    convert(tmp_path / "spec", tmp_path / "v", to="vllm")
    c = config_of(tmp_path / "v")
    assert c["pedagle"] == {"format_version": 1, "parallel_depth": 7, "verifier_name_or_path": "org/verifier"}
    written = tensors_of(tmp_path / "v")
    assert "embed_tokens.weight" in written and "verifier_lm_head.weight" not in written


def test_describe_lists_everything(published):
    path, _, _ = published
    info = describe(path)
    assert info["format"] == "vllm" and info["config"]["draft_vocab_size"] == DRAFT_VOCAB
    assert set(info["config"]) == set(DrafterConfig.__dataclass_fields__)
    assert info["missing_shared_weights"] == ["embed_tokens.weight"]
    names = {t["name"]: t for t in info["tensors"]}
    assert names["layers.0.self_attn.q_proj.weight"]["stored_name"] == "midlayer.self_attn.q_proj.weight"
    assert names["mask_hidden"]["shape"] == [1, N_AUX * HT] and names["d2t"]["dtype"] == "int64"
    assert sorted(info["ignored_tensors"]) == ["layers.1.hidden_norm.weight", "t2d"]
    assert info["problems"] == [] and info["modes"] == ["parallel", "autoregressive"]
    assert info["vllm_speculative_config"]["parallel_drafting"] is True
    assert info["vllm_speculative_config"]["num_speculative_tokens"] is None      # depth not recorded
    assert info["parallel_depth_recorded"] is False
    json.dumps(info)


# ---------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pedagle")
    formats_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_inspect_and_convert(tmp_path, published, capsys):
    path, _, embed = published
    assert run_cli(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "vllm" and info["mask_token"] == {"id": MASK_ID, "source": "ptd_token_id"}
    assert run_cli(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "layers.0.self_attn.q_proj.weight" in table and "embed_tokens.weight" in table and "[64, 32]" in table
    assert '"num_speculative_tokens": <K>' in table and "mask token   127 (from ptd_token_id)" in table
    assert run_cli(["convert", str(path), str(tmp_path / "s"), "--to", "speculators", "--verifier", "org/x"]) == 0
    assert config_of(tmp_path / "s")["speculators_config"]["verifier"]["name_or_path"] == "org/x"
    capsys.readouterr()
    assert run_cli(["convert", str(tmp_path / "s"), str(tmp_path / "v"), "--to", "vllm"]) == 0
    a = load_drafter(path, target={"embed_tokens.weight": embed})
    b = load_drafter(tmp_path / "v", target={"embed_tokens.weight": embed})
    assert drafts(a, aux_for(9)).tolist() == drafts(b, aux_for(9)).tolist()
    # errors: message on stderr, exit status 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert run_cli(["inspect", str(tmp_path / "bad")]) == 1
    assert "unknown checkpoint format" in capsys.readouterr().err


def test_save_overwrites_previous_sharded_checkpoint(tmp_path, published):
    path, _, embed = published
    out, _, _ = write_published_head(tmp_path / "out", seed=9, shards=2)
    d = load_drafter(path, target={"embed_tokens.weight": embed})
    save_drafter(d, out)
    assert not (out / "model.safetensors.index.json").exists() and not list(out.glob("model-*.safetensors"))
    assert torch.equal(load_drafter(out, target={"embed_tokens.weight": embed}).fc.weight, d.fc.weight)


@pytest.mark.parametrize("variant", ["plain", "qwen3_bias", "norms"])
def test_expected_tensor_table_matches_the_model(variant):
    """formats.validate computes the drafter's tensor list from the config; it must equal Drafter's."""
    from pedagle_core.formats.validate import model_tensors

    kw = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=6,
              intermediate_size=20, vocab_size=50, draft_vocab_size=30, target_hidden_size=12)
    kw.update({"plain": {}, "qwen3_bias": dict(architecture="qwen3", attention_bias=True, mlp_bias=True),
               "norms": dict(norm_before_fc=True, fc_norm=True, aux_layer_ids=(0, 4))}[variant])
    cfg = DrafterConfig(**kw)
    sd = Drafter(cfg).state_dict()
    table = model_tensors(cfg)
    assert set(table) == set(sd)
    for name, t in sd.items():
        assert table[name].shape == tuple(t.shape), name
        assert table[name].kind == ("float" if t.is_floating_point() else "int"), name


def test_prepare_and_load_checked_tensors(tmp_path):
    """The two halves of load_drafter that backends building their own module use."""
    from pedagle_core.formats import load_checked_tensors, prepare

    w, embed = published_weights()
    w["extra.weight"] = torch.zeros(2)
    write_checkpoint(tmp_path / "h", published_config(), w)
    with pytest.warns(UserWarning, match="extra.weight"):
        read = prepare(tmp_path / "h", mode="parallel")
    assert "extra.weight" not in read.tensors and read.tensors["layers.0.mlp.up_proj.weight"].name == \
        "midlayer.mlp.up_proj.weight"
    tensors = load_checked_tensors(read)
    assert set(tensors) == set(read.tensors) and tensors["mask_hidden"].shape == (1, 1, N_AUX * HT)
    assert torch.equal(tensors["layers.0.mlp.up_proj.weight"], w["midlayer.mlp.up_proj.weight"])


def test_load_into_drafter(tmp_path):
    """What serving backends use: a built Drafter filled from a prepared checkpoint without a target.
    Shared weights may be absent (the backend shares the target's); anything else missing raises."""
    from torch import nn

    from pedagle_core.formats import CheckpointError, load_into_drafter, prepare

    w, embed = published_weights()
    write_checkpoint(tmp_path / "h", published_config(), w)
    ref = load_drafter(tmp_path / "h", target={"embed_tokens.weight": embed})
    read = prepare(tmp_path / "h", mode="parallel")
    d = Drafter(read.config)
    d.attn = nn.Linear(2, 2)                      # an engine's attention layers: no drafter weights
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['attn.bias', 'attn.weight'\]"):
        load_into_drafter(d, read)
    loaded = load_into_drafter(d, read, exclude_prefixes=("attn.",))
    assert "embed_tokens.weight" not in loaded and "lm_head.weight" in loaded and "mask_hidden" in loaded
    for name, t in ref.state_dict().items():
        if name != "embed_tokens.weight":
            assert torch.equal(d.state_dict()[name], t), name

    plain = prepare(tmp_path / "h", mode="autoregressive")       # a full P-EAGLE head used autoregressively
    assert "mask_hidden" in load_into_drafter(Drafter(plain.config), plain)
    w2 = {k: v for k, v in w.items() if k not in ("mask_hidden", "d2t", "lm_head.weight")}
    conf = {k: v for k, v in published_config(draft_vocab_size=VOCAB).items() if k != "ptd_token_id"}
    write_checkpoint(tmp_path / "e", conf, w2)
    eagle3 = prepare(tmp_path / "e", mode="autoregressive")
    d3 = Drafter(eagle3.config)
    assert load_into_drafter(d3, eagle3) == set(eagle3.tensors)
    assert torch.isnan(d3.mask_hidden).all() and not d3.d2t.any()        # plain EAGLE-3: no mask, identity d2t
    with pytest.raises(CheckpointError, match="no weights of a pedagle Drafter"):
        load_into_drafter(Drafter(dataclasses.replace(eagle3.config, num_hidden_layers=1)), eagle3)
