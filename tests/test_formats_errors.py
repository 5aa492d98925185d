"""Bad checkpoints: one test per case, each checking that the message names the file, the field or
tensor, and the expected value."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from helpers_formats import (DRAFT_VOCAB, H, HT, MASK_ID, N_AUX, VOCAB, published_config, published_weights,
                             write_checkpoint)
from pedagle_core.config import DrafterConfig
from pedagle_core.formats import (CheckpointError, convert, describe, detect_format, load_drafter, read_config,
                                  save_drafter)
from pedagle_core.model import Drafter


def make(tmp_path, config: dict | None = None, drop=(), change: dict | None = None, name="ckpt", **overrides):
    """The published head (independent writer) with config overrides, dropped tensors and changed tensors."""
    w, embed = published_weights()
    for k in drop:
        del w[k]
    w.update(change or {})
    conf = config if config is not None else published_config(**overrides)
    path = write_checkpoint(tmp_path / name, conf, w)
    return path, {"embed_tokens.weight": embed}


def expect(fn, *parts):
    """Call fn, expect CheckpointError whose message contains every part (plain substrings)."""
    with pytest.raises(CheckpointError) as info:
        fn()
    msg = str(info.value)
    for p in parts:
        assert str(p) in msg, f"{p!r} not in message: {msg}"
    return msg


# ------------------------------------------------------------------------------ tensors
def test_missing_tensor(tmp_path):
    path, tgt = make(tmp_path, drop=["midlayer.mlp.down_proj.weight"])
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "missing tensor",
           "'layers.0.mlp.down_proj.weight' [32, 48]", "config.json")


def test_missing_tensor_is_never_filled_even_when_not_strict(tmp_path):
    path, tgt = make(tmp_path, drop=["norm.weight"])
    expect(lambda: load_drafter(path, target=tgt, strict=False), "model.safetensors", "'norm.weight' [32]")


def test_missing_d2t_with_reduced_vocab(tmp_path):
    path, tgt = make(tmp_path, drop=["d2t"])
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'d2t' [64]")


def test_extra_unknown_tensor_warns(tmp_path):
    path, tgt = make(tmp_path, change={"mystery.weight": torch.zeros(3)})
    with pytest.warns(UserWarning, match=r"model\.safetensors: ignoring unknown tensor\(s\) \['mystery\.weight'\]"):
        d = load_drafter(path, target=tgt)
    assert "mystery.weight" not in d.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_drafter(path, target=tgt, strict=False)           # not strict: silent


def test_wrong_shape(tmp_path):
    path, tgt = make(tmp_path, change={"midlayer.self_attn.q_proj.weight": torch.zeros(32, 32)})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'midlayer.self_attn.q_proj.weight'",
           "[32, 32]", "expected [32, 64] = [num_attention_heads * head_dim, 2 * hidden_size]")


def test_mask_hidden_wrong_size(tmp_path):
    path, tgt = make(tmp_path, change={"mask_hidden": torch.zeros(1, 1, 64)})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'mask_hidden'", "[1, 1, 64]", "[1, 1, 96]")


def test_fc_width_disagrees_with_aux_count(tmp_path):
    """config says 2 aux states (and 2 layer ids) while fc takes 3 * target_hidden."""
    path, tgt = make(tmp_path, num_aux_hidden_states=2,
                     eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 3]})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'fc.weight' has shape [32, 96]",
           "expected [32, 64] = [hidden_size, num_aux_hidden_states * target_hidden_size]",
           "num_aux_hidden_states=2", "target_hidden_size=32")


def test_layer_ids_disagree_with_aux_count(tmp_path):
    path, tgt = make(tmp_path, num_aux_hidden_states=2)
    expect(lambda: read_config(path), "config.json", "'eagle_config.eagle_aux_hidden_state_layer_ids' = [1, 3, 5]",
           "reads 2 aux hidden states", "field 'num_aux_hidden_states'", "expected 2 layer ids")


def test_more_layers_in_weights_than_config(tmp_path):
    path, tgt = make(tmp_path, num_hidden_layers=1)
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'layers.1.self_attn.q_proj.weight'",
           "belongs to layer 1", "num_hidden_layers = 1")


def test_float_d2t(tmp_path):
    path, tgt = make(tmp_path, change={"d2t": published_weights()[0]["d2t"].float()})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'d2t' has dtype F32", "integer dtype")


def test_integer_weight(tmp_path):
    path, tgt = make(tmp_path, change={"norm.weight": torch.ones(H, dtype=torch.int32)})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'norm.weight' has dtype I32",
           "floating-point dtype")


def test_nan_weight(tmp_path):
    fc = published_weights()[0]["fc.weight"].clone()
    fc[3, 5] = float("nan")
    fc[0, 0] = float("inf")
    path, tgt = make(tmp_path, change={"fc.weight": fc})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors", "'fc.weight'", "2 non-finite", "1 NaN",
           "expected finite weights")


def test_d2t_outside_target_vocab(tmp_path):
    d2t = published_weights()[0]["d2t"].clone()
    d2t[5] = VOCAB                                  # draft id 5 -> target id 5 + 128
    path, tgt = make(tmp_path, change={"d2t": d2t})
    expect(lambda: load_drafter(path, target=tgt), "model.safetensors: tensor 'd2t'", "draft id 5",
           f"target id {5 + VOCAB}", f"in [0, {VOCAB})")
    expect(lambda: load_drafter(path, target=tgt, strict=False), "'d2t'", "draft id 5")   # always checked


def test_negative_d2t_target(tmp_path):
    d2t = published_weights()[0]["d2t"].clone()
    d2t[0] = -1
    path, tgt = make(tmp_path, change={"d2t": d2t})
    expect(lambda: load_drafter(path, target=tgt), "'d2t'", "draft id 0", "target id -1", f"[0, {VOCAB})")


def test_nonidentity_d2t_with_full_vocab(tmp_path):
    path, tgt = make(tmp_path, draft_vocab_size=VOCAB,
                     change={"lm_head.weight": torch.randn(VOCAB, H), "d2t": torch.ones(VOCAB, dtype=torch.int64)})
    expect(lambda: load_drafter(path, target=tgt), "'d2t'")
    d2t = torch.zeros(VOCAB, dtype=torch.int64)
    d2t[3] = 1
    path, tgt = make(tmp_path, draft_vocab_size=VOCAB, name="b",
                     change={"lm_head.weight": torch.randn(VOCAB, H), "d2t": d2t})
    expect(lambda: load_drafter(path, target=tgt), "'d2t' is not the identity", f"= {VOCAB}", "all-zero offsets")


# ------------------------------------------------------------------------------ config
def test_mask_token_outside_vocab(tmp_path):
    path, tgt = make(tmp_path, ptd_token_id=500)
    expect(lambda: load_drafter(path, target=tgt), "config.json", "'ptd_token_id' = 500", f"[0, {VOCAB})")


def test_speculators_mask_token_outside_vocab(tmp_path):
    conf = speculators_config(mask_token_id=-3)
    path, tgt = make(tmp_path, config=conf)
    expect(lambda: read_config(path), "config.json", "'mask_token_id' = -3", f"[0, {VOCAB})")


def test_draft_vocab_larger_than_vocab(tmp_path):
    path, tgt = make(tmp_path, draft_vocab_size=VOCAB + 1)
    expect(lambda: read_config(path), "config.json", f"'draft_vocab_size' = {VOCAB + 1}", f"<= vocab_size = {VOCAB}")


def test_missing_field_takes_transformers_default_then_disagrees(tmp_path):
    conf = published_config()
    del conf["intermediate_size"]                  # LlamaConfig's default, 11008, as transformers/vLLM read it
    path, tgt = make(tmp_path, config=conf)
    assert read_config(path)[0].intermediate_size == 11008
    # one error naming the missing field (not one shape error per tensor), with an example tensor
    expect(lambda: load_drafter(path, target=tgt), "config.json: field(s) 'intermediate_size' (assumed 11008) missing",
           "6 tensor(s) with other shapes", "model.safetensors: tensor ", "11008")


def test_non_integer_field(tmp_path):
    path, _ = make(tmp_path, hidden_size="32")
    expect(lambda: read_config(path), "config.json", "field 'hidden_size' = '32'", "positive integer")


def test_bad_field_value(tmp_path):
    path, _ = make(tmp_path, num_key_value_heads=3)
    expect(lambda: read_config(path), "config.json", "'num_key_value_heads' = 3", "divisor of num_attention_heads=4")


def test_unsupported_rope(tmp_path):
    path, _ = make(tmp_path, rope_scaling={"rope_type": "longrope", "factor": 2.0})
    expect(lambda: read_config(path), "config.json", "'rope_parameters.rope_type' = 'longrope'", "'llama3'")


def test_unknown_format(tmp_path):
    path, _ = make(tmp_path, config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    for fn in (detect_format, read_config, load_drafter, describe):
        expect(lambda: fn(path), "config.json", "unknown checkpoint format", "'gpt2'", "speculators_model_type")


def test_plain_target_config_is_not_a_drafter(tmp_path):
    conf = {k: v for k, v in published_config().items()
            if k not in ("draft_vocab_size", "target_hidden_size", "eagle_config", "ptd_token_id")}
    conf["architectures"] = ["LlamaForCausalLM"]
    path = write_checkpoint(tmp_path / "t", conf, {"model.embed_tokens.weight": torch.zeros(4, 4)})
    expect(lambda: detect_format(path), "config.json", "no 'fc.weight'", "expected a drafter checkpoint")


def test_unknown_speculators_type(tmp_path):
    path, _ = make(tmp_path, config=speculators_config(speculators_model_type="medusa"))
    expect(lambda: read_config(path), "config.json", "'speculators_model_type' = 'medusa'", "['eagle3', 'peagle']")


def test_missing_config_and_directory(tmp_path):
    expect(lambda: load_drafter(tmp_path / "nope"), str(tmp_path / "nope"), "no such checkpoint directory")
    (tmp_path / "empty").mkdir()
    expect(lambda: read_config(tmp_path / "empty"), "config.json", "missing")


def test_unreadable_config(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{not json")
    expect(lambda: read_config(tmp_path / "c"), "config.json", "unreadable", "JSON object")


def test_no_weight_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps(published_config()))
    expect(lambda: load_drafter(tmp_path / "c"), str(tmp_path / "c"), "no weights", "model.safetensors")


# ------------------------------------------------------------------------------ files
def test_truncated_safetensors(tmp_path):
    path, tgt = make(tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    msg = expect(lambda: load_drafter(path, target=tgt), str(f), "truncated", "expected the complete file")
    assert re.search(r"announces \d+ bytes of tensor data but the file holds \d+", msg)
    expect(lambda: describe(path), "truncated")


def test_truncated_header(tmp_path):
    path, tgt = make(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    expect(lambda: load_drafter(path, target=tgt), str(f), "truncated safetensors header")


def test_garbage_safetensors(tmp_path):
    path, tgt = make(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes((16).to_bytes(8, "little") + b"this is not json" + b"\0" * 64)
    expect(lambda: load_drafter(path, target=tgt), str(f), "unreadable safetensors header", "JSON object")


def test_missing_shard(tmp_path):
    w, embed = published_weights()
    path = write_checkpoint(tmp_path / "sh", published_config(), w, shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    expect(lambda: load_drafter(path, target={"embed_tokens.weight": embed}), "model.safetensors.index.json",
           "'model-00002-of-00002.safetensors'", "missing")


# ------------------------------------------------------------------------------ modes and targets
def test_parallel_mode_needs_mask_hidden(tmp_path):
    path, tgt = make(tmp_path, drop=["mask_hidden"])
    expect(lambda: load_drafter(path, target=tgt, mode="parallel"), "model.safetensors",
           "missing tensor 'mask_hidden'", f"[1, 1, {N_AUX * HT}]", "mode='autoregressive'")


def test_parallel_mode_needs_mask_token(tmp_path):
    conf = published_config()
    del conf["ptd_token_id"]
    path, tgt = make(tmp_path, config=conf)
    expect(lambda: load_drafter(path, target=tgt, mode="parallel"), "config.json", "no mask token",
           "'ptd_token_id'", "'mask_token_id'", "mode='parallel'")


def test_bad_mode(tmp_path):
    path, tgt = make(tmp_path)
    expect(lambda: load_drafter(path, target=tgt, mode="tree"), "mode = 'tree'", "'parallel'")


def test_shared_embeddings_need_a_target(tmp_path):
    path, _ = make(tmp_path)
    expect(lambda: load_drafter(path), str(path), "embed_tokens.weight", "pass target=")


def test_target_vocab_mismatch(tmp_path):
    path, _ = make(tmp_path)
    expect(lambda: load_drafter(path, target={"embed_tokens.weight": torch.zeros(VOCAB + 8, H)}), "config.json",
           f"vocab_size = {VOCAB}", f"vocab_size = {VOCAB + 8}", "target dict")
    tgt = write_checkpoint(tmp_path / "target", {"model_type": "llama", "vocab_size": 200, "hidden_size": H},
                           {"model.embed_tokens.weight": torch.zeros(200, H), "lm_head.weight": torch.zeros(200, H)})
    expect(lambda: load_drafter(path, target=tgt), "config.json", f"vocab_size = {VOCAB}", "vocab_size = 200",
           str(tgt))


def test_target_hidden_mismatch(tmp_path):
    path, _ = make(tmp_path)
    expect(lambda: load_drafter(path, target={"embed_tokens.weight": torch.zeros(VOCAB, 48)}), "config.json",
           f"target_hidden_size = {HT}", "hidden_size = 48")


def test_target_without_embeddings(tmp_path):
    path, _ = make(tmp_path)
    tgt = write_checkpoint(tmp_path / "target", {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": H},
                           {"lm_head.weight": torch.zeros(VOCAB, H)})
    expect(lambda: load_drafter(path, target=tgt), str(tgt), "embed_tokens.weight")


def test_reduced_vocab_head_must_ship_lm_head(tmp_path):
    path, tgt = make(tmp_path, drop=["lm_head.weight"])
    tgt["lm_head.weight"] = torch.zeros(VOCAB, H)
    expect(lambda: load_drafter(path, target=tgt), "missing tensor 'lm_head.weight'", f"[{DRAFT_VOCAB}, {H}]",
           "must ship its own lm_head")


def test_target_nan_embeddings(tmp_path):
    path, _ = make(tmp_path)
    e = torch.zeros(VOCAB, H)
    e[1, 1] = float("nan")
    expect(lambda: load_drafter(path, target={"embed_tokens.weight": e}), "target dict", "'embed_tokens.weight'",
           "non-finite")


# ------------------------------------------------------------------------------ writing
def tiny_drafter(**kw) -> Drafter:
    base = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                intermediate_size=24, vocab_size=40, mask_token_id=3, aux_layer_ids=(1, 2, 3))
    base.update(kw)
    return Drafter(DrafterConfig(**base))


def test_save_refuses_nan(tmp_path):
    d = tiny_drafter()
    with torch.no_grad():
        d.norm.weight[0] = float("nan")
    expect(lambda: save_drafter(d, tmp_path / "x"), "drafter tensor 'norm.weight'", "1 NaN", "finite")
    assert not (tmp_path / "x" / "config.json").exists()


def test_save_refuses_d2t_outside_vocab(tmp_path):
    d = tiny_drafter(draft_vocab_size=20)
    d.d2t.fill_(30)
    expect(lambda: save_drafter(d, tmp_path / "x"), "drafter tensor 'd2t'", "draft id 10", "target id 40", "[0, 40)")


def test_save_refuses_nonidentity_d2t_with_full_vocab(tmp_path):
    d = tiny_drafter()
    d.d2t[2] = 1
    expect(lambda: save_drafter(d, tmp_path / "x"), "drafter buffer 'd2t'", "not the identity", "all-zero")


def test_save_unknown_format(tmp_path):
    expect(lambda: save_drafter(tiny_drafter(), tmp_path / "x", format="onnx"), "format = 'onnx'",
           "['speculators', 'vllm']")


def test_sliding_llama_cannot_be_written(tmp_path):
    d = tiny_drafter(num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"], sliding_window=4)
    expect(lambda: save_drafter(d, tmp_path / "x"), "'layer_types'", "expected architecture 'qwen3'")


def test_convert_onto_itself(tmp_path):
    path, _ = make(tmp_path)
    expect(lambda: convert(path, path, to="speculators"), str(path), "destination is the source")
    expect(lambda: convert(path, tmp_path / "o", to="gguf"), "--to = 'gguf'", "['speculators', 'vllm']")


# ------------------------------------------------------------------------------ helpers
def speculators_config(**overrides) -> dict:
    conf = {
        "speculators_model_type": "peagle",
        "transformer_layer_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": H,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "head_dim": 8, "intermediate_size": 48},
        "draft_vocab_size": DRAFT_VOCAB, "target_hidden_size": HT, "eagle_aux_hidden_state_layer_ids": [1, 3, 5],
        "mask_token_id": MASK_ID,
        "speculators_config": {"proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 4}],
                               "verifier": {"name_or_path": "x"}},
    }
    conf.update(overrides)
    return conf
