#!/usr/bin/env python3
"""Train pedagle's bundled tiny drafters for the tiny code target, reproducibly from a seed.

Given the tiny target directory (``models/tiny-code/target``: a Llama with hidden 256, 8 layers,
head_dim 64, vocab 4096, with ``train_prompts.jsonl`` / ``heldout_prompts.jsonl`` next to it):

  1. regenerates the responses of the training (and held-out) prompts with the target itself (greedy)
     and caches the target's aux hidden states (layers 2, 4, 5) and final hidden states once;
  2. trains a P-EAGLE drafter (``--peagle-layers`` layers, default 4, hidden 256, head_dim 64, COD over
     ``--depth`` depths, default 8, MASK token ``<|mask|>`` = id 1) into ``OUT/peagle``;
  3. trains an EAGLE-3 drafter (1 layer) into ``OUT/eagle3``, with ``--ttt-steps`` (default 4) test-time
     training steps: the drafter learns from its own fed-back hidden states, as it drafts at inference;
  4. both share a draft vocabulary of ``--draft-vocab`` tokens (top-N of the regenerated data), are saved
     in bf16 in the canonical (vLLM) format, with ``logs/`` (args.json, metrics.jsonl) beside the weights,
     and ``OUT/drafters_summary.json`` sums up the run (held-out per-depth accuracy, timings, seed).

GPU (one device call; a few minutes on an H100)::

    python scripts/train_tiny_drafters.py --target models/tiny-code/target --out models/tiny-code

CPU toy check (builds a toy target when --target is absent, a minute)::

    python scripts/train_tiny_drafters.py --tiny --out /tmp/tiny-drafters
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _commit() -> str | None:
    """The code's commit (see `pedagle_core.provenance.code_commit`)."""
    from pedagle_core.provenance import code_commit

    return code_commit()


def make_toy_target(path: Path, seed: int = 0) -> Path:
    """A toy stand-in for the tiny target (random Llama, 8 layers, pre-tokenised prompts) for --tiny."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=16, vocab_size=256, max_position_embeddings=512,
                      initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    g = torch.Generator().manual_seed(seed + 1)
    for name, n in (("train_prompts.jsonl", 48), ("heldout_prompts.jsonl", 8)):
        with (path.parent / name).open("w") as f:
            for _ in range(n):
                k = int(torch.randint(4, 16, (1,), generator=g))
                f.write(json.dumps({"input_ids": torch.randint(2, 250, (k,), generator=g).tolist()}) + "\n")
    return path


def extra_prompts(target: Path, train_prompts: str, n: int, seed: int, out: Path) -> str:
    """``train_prompts`` plus ``n`` new prompts drawn (seeded) from the same training files of the stdlib
    recorded in ``target/data_split.json``; written to ``out``, whose path is returned. The stdlib must be
    the one the target was built from (same Python version), so that held-out files stay held out."""
    import platform

    from tokenizers import Tokenizer

    sys.path.insert(0, str(ROOT / "scripts"))
    from build_tiny_target import load_corpus, make_train_prompts

    if out.exists():                          # deterministic in (prompts, n, seed): runs sharing WORK reuse it
        return str(out)
    split_file = target / "data_split.json"
    if not split_file.exists():
        raise SystemExit(f"{split_file}: missing; --extra-prompts needs the target's by-file data split")
    split = json.loads(split_file.read_text())
    if platform.python_version() != split["python_version"] or not Path(split["stdlib_root"]).is_dir():
        raise SystemExit(f"{split_file}: field 'python_version' = {split['python_version']} at "
                         f"{split['stdlib_root']}; this machine has Python {platform.python_version()}: "
                         "--extra-prompts must run where the target's stdlib is")
    docs, _ = load_corpus(split["stdlib_root"])
    docs = dict(docs)
    files = [f for f in split["train"] if f in docs]
    if len(files) != len(split["train"]):
        raise SystemExit(f"{split_file}: {len(split['train']) - len(files)} training files of the split are "
                         f"missing under {split['stdlib_root']}")
    old = [json.loads(line) for line in Path(train_prompts).read_text().splitlines() if line.strip()]
    seen = {r["prompt"] for r in old}
    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    new = [r for r in make_train_prompts(tok, docs, files, n + len(seen), seed, 64, 192) if r["prompt"] not in seen][:n]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for r in old + new:
            f.write(json.dumps(r) + "\n")
    print(f"[train_tiny_drafters] {len(old)} + {len(new)} training prompts -> {out}", file=sys.stderr)
    return str(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="tiny target directory (default models/tiny-code/target; --tiny: a toy)")
    p.add_argument("--out", default=str(ROOT / "models" / "tiny-code"), help="writes OUT/peagle and OUT/eagle3")
    p.add_argument("--work-dir", help="scratch: regenerated data, feature cache, checkpoints (default OUT/_work)")
    p.add_argument("--train-prompts", help="default: TARGET/train_prompts.jsonl (or TARGET/../)")
    p.add_argument("--heldout-prompts", help="default: TARGET/heldout_prompts.jsonl (or TARGET/../)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--peagle-layers", type=int, default=4)
    p.add_argument("--ttt-steps", type=int, default=4, help="EAGLE-3 test-time-training steps (1 = next-token only)")
    p.add_argument("--draft-vocab", type=int, default=2048)
    p.add_argument("--mask-token-id", type=int, default=1, help="<|mask|> of the tiny tokenizer")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompts", type=int, help="cap the training prompts")
    p.add_argument("--extra-prompts", type=int, default=0,
                   help="add this many new prompts from the target's training files (needs its stdlib)")
    p.add_argument("--extra-seed", type=int, default=1000, help="seed of the extra prompts")
    p.add_argument("--regen", choices=("greedy", "sample"), default="greedy", help="how the target regenerates")
    p.add_argument("--peagle-name", default="peagle", help="output directory name of the P-EAGLE drafter")
    p.add_argument("--peagle-intermediate", type=int, help="P-EAGLE MLP width (default: the target's)")
    p.add_argument("--max-eval-prompts", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--peagle-steps", type=int, default=3000)
    p.add_argument("--eagle3-steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--segments", type=int, default=1)
    p.add_argument("--regen-batch", type=int, default=512)
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (under WORK/<name>)")
    p.add_argument("--only", choices=("peagle", "eagle3"), help="train one of the two")
    p.add_argument("--prepare-only", action="store_true",
                   help="only regenerate the data and write the feature cache (for runs that share WORK)")
    p.add_argument("--summary", help="summary JSON (default OUT/drafters_summary.json); drafters already in it "
                                     "are kept, so runs of --only can share one")
    p.add_argument("--tar", help="also pack OUT/peagle, OUT/eagle3 and the summary into this .tar.gz")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (checks the script)")
    a = p.parse_args(argv)

    import torch

    from pedagle_core.train.trainer import TrainConfig, train

    out = Path(a.out)
    work = Path(a.work_dir) if a.work_dir else out / "_work"
    if a.tiny:
        if a.target is None:
            a.target = str(make_toy_target(work / "toy" / "target", a.seed))
        a.device = a.device or "cpu"
        a.peagle_steps, a.eagle3_steps = min(a.peagle_steps, 30), min(a.eagle3_steps, 20)
        a.seq_len, a.max_new_tokens, a.draft_vocab = min(a.seq_len, 128), min(a.max_new_tokens, 32), min(a.draft_vocab, 200)
        a.regen_batch = min(a.regen_batch, 16)
        a.peagle_layers = min(a.peagle_layers, 2)
        torch.set_num_threads(min(2, torch.get_num_threads()))
    target = Path(a.target or ROOT / "models" / "tiny-code" / "target")
    if not (target / "config.json").exists():
        print(f"{target}: no target (config.json missing); build it with scripts/build_tiny_target.py", file=sys.stderr)
        return 2
    def beside(name: str) -> str:               # the prompts live in the target directory or next to it
        return str(target / name) if (target / name).exists() else str(target.parent / name)

    train_prompts = a.train_prompts or beside("train_prompts.jsonl")
    if a.extra_prompts:
        train_prompts = extra_prompts(target, train_prompts, a.extra_prompts, a.extra_seed,
                                      work / f"train_prompts_plus{a.extra_prompts}_s{a.extra_seed}.jsonl")
    heldout = a.heldout_prompts or beside("heldout_prompts.jsonl")
    if not Path(heldout).exists():
        heldout = None
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache = work / "cache"
    common = dict(target=str(target), data=train_prompts, eval_data=heldout, cache_dir=str(cache), seed=a.seed,
                  device=dev, draft_vocab=a.draft_vocab, max_new_tokens=a.max_new_tokens, max_prompts=a.max_prompts,
                  max_eval_prompts=a.max_eval_prompts, seq_len=a.seq_len, regen=a.regen, regen_batch=a.regen_batch,
                  feature_batch=32, lr=a.lr, dtype="bf16" if dev.startswith("cuda") else "fp32", save_dtype="bf16",
                  hidden_size=None, head_dim=None, log_every=10, progress=sys.stderr.isatty(), weight_decay=0.0,
                  min_lr_ratio=0.05, save_every=a.save_every)
    runs = {
        a.peagle_name: dict(mode="parallel", depth=a.depth, layers=a.peagle_layers, steps=a.peagle_steps,
                            mask_token_id=a.mask_token_id, segments=a.segments,
                            intermediate_size=a.peagle_intermediate),
        "eagle3": dict(mode="autoregressive", ttt_steps=a.ttt_steps, layers=1, steps=a.eagle3_steps),
    }
    if a.only:
        runs = {k: v for k, v in runs.items() if (k == "eagle3") == (a.only == "eagle3")}
    if a.prepare_only:
        t0 = time.perf_counter()
        train(TrainConfig(out=str(work / "prepare"), work_dir=str(work / "prepare"), prepare_only=True, **common,
                          **next(iter(runs.values()))))
        print(json.dumps({"prepare_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        return 0
    summary_file = Path(a.summary) if a.summary else out / "drafters_summary.json"
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": _commit(), "seed": a.seed, "target": str(target), "device":
               torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu", "torch": torch.__version__,
               "drafters": {}}
    t_all = time.perf_counter()
    for name, kw in runs.items():
        dst = out / name
        if dst.exists():
            shutil.rmtree(dst)
        wd = work / name
        if wd.exists():
            shutil.rmtree(wd)
        t0 = time.perf_counter()
        cfg = TrainConfig(out=str(dst), work_dir=str(wd), **common, **kw)
        res = train(cfg)
        dt = time.perf_counter() - t0
        logs = dst / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for f in ("args.json", "metrics.jsonl"):
            if (wd / f).exists():
                shutil.copy(wd / f, logs / f)
        final = {k: res.get(k) for k in ("loss", "acc", "eval_acc", "eval_kl", "eval_al_proxy", "eval_count")}
        summary["drafters"][name] = {"path": str(dst), "seconds": round(dt, 1), "steps": kw["steps"],
                                     "layers": kw["layers"], "depth": cfg.depth, "mode": cfg.mode, "final": final}
        print(json.dumps({name: summary["drafters"][name]}), flush=True)
    summary["seconds_total"] = round(time.perf_counter() - t_all, 1)
    summary["train_prompts"] = train_prompts
    if summary_file.exists():                  # keep the drafters another --only run put there
        old = json.loads(summary_file.read_text()).get("drafters", {})
        summary["drafters"] = {**{k: v for k, v in old.items() if k not in summary["drafters"]}, **summary["drafters"]}
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    if a.tar:
        Path(a.tar).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(a.tar, "w:gz") as tf:
            for name in runs:
                tf.add(out / name, arcname=name)
            tf.add(summary_file, arcname=summary_file.name)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
