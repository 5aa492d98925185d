"""Fast CPU tests of scripts/build_tiny_target.py (the bundled tiny target model builder)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from helpers_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


btt = load_script("scripts/build_tiny_target.py")

CODE_SAMPLES = [
    "def f(x):\n    return x + 1\n",
    "class A(B):\n\t'''doc — ünïcödé ✓ 漢字'''\n    pass\n\n\n",
    "x = {'a': [1, 2, 3], \"b\": (4.5e-3, 0x1F)}  # comment\r\nif x: y = f'{x!r:>10}'\n",
    "   leading spaces and trailing spaces   \n\n\nemoji 🐍\n",
    "",
    "no newline at end",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    docs, _ = btt.load_corpus(btt.default_stdlib_root(), max_files=40)
    return dict(docs)


@pytest.fixture(scope="module")
def small_tok(corpus):
    return btt.train_tokenizer(list(corpus.values())[:30], vocab_size=768)


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def test_tokenizer_roundtrip_and_specials(small_tok, corpus):
    tok = small_tok
    assert tok.get_vocab_size() == 768
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|mask|>") == 1
    for text in CODE_SAMPLES + list(corpus.values())[30:34]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        with_bos = tok.encode(text).ids
        assert with_bos[0] == 0 and with_bos[1:] == ids
        assert 1 not in ids  # <|mask|> never appears in ordinary text
    # no token crosses a line boundary: token counts are additive over lines
    text = list(corpus.values())[31]
    lines, counts = btt.line_token_counts(tok, text)
    assert "".join(lines).rstrip("\n") == text.rstrip("\n")
    assert sum(counts) == len(tok.encode("".join(lines), add_special_tokens=False).ids)
    for t in tok.encode(text, add_special_tokens=False).tokens:
        assert "Ċ" not in t or t == "Ċ"  # 'Ċ' is byte-level '\n'


def test_tokenizer_training_is_deterministic(corpus):
    texts = list(corpus.values())[:10]
    a = btt.train_tokenizer(texts, vocab_size=512).to_str()
    b = btt.train_tokenizer(texts, vocab_size=512).to_str()
    assert a == b


def test_tokenizer_loads_with_transformers(small_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    btt.save_tokenizer(small_tok, str(tmp_path), 2048)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 0, 0, 1)
    for text in CODE_SAMPLES:
        ids = tok(text).input_ids
        assert ids[0] == 0
        assert ids[1:] == small_tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=True) == text


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def _random_model(cfg, seed=0):
    model = btt.TinyLlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights: not all ones, so a misplaced norm shows up
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model.eval()


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_matches_transformers_llama(tmp_path, kv_heads):
    transformers = pytest.importorskip("transformers")
    cfg = btt.TinyLlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=64,
                              max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5)
    ours = _random_model(cfg)
    ours.save_pretrained(str(tmp_path), dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
    for impl in ("eager", "sdpa"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32,
                                                               attn_implementation=impl).eval()
        assert type(hf).__name__ == "LlamaForCausalLM"
        hf_keys = set(hf.state_dict()) - {"lm_head.weight"}
        assert hf_keys == set(ours.state_dict())
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied
        with torch.no_grad():
            ref = hf(ids, use_cache=False).logits
        assert ref.shape == got.shape
        diff = (ref - got).abs().max().item()
        assert diff < 1e-4, (impl, diff)
    # and our loader reads back what we wrote
    again = btt.TinyLlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(again(ids), got)


def test_config_json_is_hf_llama(tmp_path):
    cfg = btt.TinyLlamaConfig()
    model = btt.TinyLlamaForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(str(tmp_path))
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["architectures"] == ["LlamaForCausalLM"] and d["model_type"] == "llama"
    assert d["torch_dtype"] == "bfloat16" and d["tie_word_embeddings"] is True
    assert (d["hidden_size"], d["num_hidden_layers"], d["head_dim"], d["vocab_size"]) == (256, 8, 64, 4096)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()
    assert os.path.getsize(tmp_path / "model.safetensors") < 12e6


def test_smoke_training_lowers_loss(small_tok, corpus, tmp_path):
    torch.manual_seed(0)
    ids = btt.encode_docs(small_tok, list(corpus.values())[:30])
    stream = btt.pack_stream(ids)
    cfg = btt.TinyLlamaConfig(vocab_size=small_tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=64)
    model = btt.TinyLlamaForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    args = btt.resolve_args(["--out", str(tmp_path), "--tiny", "--steps", "20", "--batch-size", "8",
                             "--seq-len", "64", "--eval-every", "0", "--dropout", "0", "--log-every", "5"])
    dev = torch.device("cpu")
    before = btt.evaluate(model, stream, 64, 16, dev, max_seqs=32)["loss"]
    log = btt.JsonlLog(str(tmp_path / "log.jsonl"))
    res = btt.train_model(model, stream, stream, stream, args, dev, log)
    log.close()
    after = btt.evaluate(model, stream, 64, 16, dev, max_seqs=32)["loss"]
    assert after < before - 0.5, (before, after)
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in recs if r["event"] == "train"]
    assert train_losses[-1] < train_losses[0]
    assert res["selected_step"] == 20


# ---------------------------------------------------------------------------------------------
# corpus / split / prompts
# ---------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_by_file():
    docs, _ = btt.load_corpus(btt.default_stdlib_root())
    rels = [r for r, _ in docs]
    assert rels == sorted(rels)
    assert not any(btt.is_excluded(r) for r in rels)
    assert not any(p in ("test", "tests", "idle_test", "site-packages") for r in rels for p in r.split("/")[:-1])
    a = btt.make_split(rels, 0, 20)
    b = btt.make_split(list(reversed(rels)), 0, 20)
    assert a == b
    assert sorted(a["train"] + a["val"] + a["heldout"]) == rels  # every file in exactly one split
    assert not set(a["train"]) & set(a["heldout"]) and not set(a["val"]) & set(a["heldout"])
    assert 0.02 < len(a["heldout"]) / len(rels) < 0.09
    c = btt.make_split(rels, 1, 20)
    assert c["heldout"] != a["heldout"]
    for r in a["heldout"][:5]:
        assert btt.split_of(r, 0, 20) == "heldout"


def test_prompts_are_line_aligned_chunks(small_tok, corpus):
    files = sorted(corpus)[:20]
    ps = btt.make_prompts(small_tok, corpus, files, 12, seed=0, lo=64, hi=192)
    assert ps == btt.make_prompts(small_tok, corpus, files, 12, seed=0, lo=64, hi=192)
    assert len(ps) == 12
    for p in ps:
        assert set(p) == {"prompt", "file"} and p["file"] in files
        assert p["prompt"].endswith("\n") and p["prompt"] in corpus[p["file"]] + "\n"
        n = len(small_tok.encode(p["prompt"], add_special_tokens=False).ids)
        assert 64 <= n <= 192
    tp = btt.make_train_prompts(small_tok, corpus, files, 20, seed=1, lo=64, hi=192)
    assert len(tp) == 20 and all(p["file"] in files for p in tp)


def test_end_to_end_tiny_build(tmp_path):
    out = tmp_path / "target"
    btt.main(["--out", str(out), "--tiny", "--steps", "6", "--max-files", "60", "--num-train-prompts", "16",
                  "--num-heldout-prompts", "4", "--seq-len", "64"])
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "data_split.json", "heldout_prompts.jsonl", "train_prompts.jsonl", "train_log.jsonl", "metrics.json",
              "README.md"):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mask_token_id"] == 1 and math.isfinite(metrics["heldout_loss"])
    split = json.loads((out / "data_split.json").read_text())
    held = set(split["heldout"])
    assert all(json.loads(line)["file"] in held for line in (out / "heldout_prompts.jsonl").read_text().splitlines())
    assert all(json.loads(line)["file"] in set(split["train"])
               for line in (out / "train_prompts.jsonl").read_text().splitlines())
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16
    enc = tok("def main():\n", return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == enc.input_ids.shape[1] + 5 or int(gen[0, -1]) == tok.eos_token_id
