#!/usr/bin/env python3
"""GPU end-to-end check of pedagle's SGLang backend (``--speculative-algorithm PEAGLE``) against pedagle's reference
backend on the bundled tiny family. NOT run on pedagle's CPU CI: it needs a CUDA GPU and SGLang 0.5.23 with its
CUDA dependencies (``pip install 'pedagle[sglang]'`` on a GPU machine).

    python scripts/sglang_gpu_e2e.py [--family models/tiny-code] [--K 3] [--steps 12] [--num-prompts 4]

It runs, greedily with EOS ignored, on the same prompts:

1. SGLang, target only (no speculation);
2. SGLang with PEAGLE (``sglang.Engine(speculative_algorithm="PEAGLE", speculative_draft_model_path=DRAFTER,
   speculative_num_draft_tokens=K+1)``), recording every draft step (``PEDAGLE_RECORD_DRAFTS``);
3. pedagle's reference backend (``ReferenceBackend.run_case``: the same target and drafter, mode 'parallel').

and checks:

* greedy output with PEAGLE == target-only output (speculation is lossless);
* target-only SGLang output == the reference engine's output (same greedy continuation);
* for the first ``--steps`` verify steps of every request: the drafts SGLang proposed == the reference's drafts,
  the accepted counts are equal, and so are the accepted-per-position counters.

Expected output (numbers depend on the trained family; every check says ``ok``)::

    sglang 0.5.23, device NVIDIA ..., K=3, 4 prompts, 12 verify steps
    [ok] PEAGLE output == target-only output (4 requests, 52 tokens each)
    [ok] target-only output == reference output
    [ok] drafts equal reference: 48/48 request-steps
    [ok] accepted counts equal reference: 48/48 request-steps
    [ok] accepted per position: sglang [40, 31, 22] == reference [40, 31, 22]
    mean accepted drafts per step: 1.94 (sglang) 1.94 (reference)
    PASS

Exit status 0 when every check passes, 1 otherwise. ``--json PATH`` writes the raw results. Near-ties of the
drafter's logits can make float16/bfloat16 runs differ in a draft; run float32 (the default) for an exact check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prompts_for(target: Path, n: int, seed: int, lengths=(7, 13, 24, 41)) -> list[list[int]]:
    """Deterministic prompts: the target's tokenizer on short code snippets when it has one, else random ids."""
    snippets = ["def add(a, b):\n    return", "for i in range(10):\n    print(", "class Stack:\n    def push(self, x):",
                "import os\nfor name in os.listdir(", "while left < right:\n    mid =", "x = [i * i for i in"]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(target))
        return [tok.encode(snippets[i % len(snippets)]) for i in range(n)]
    except Exception:  # noqa: BLE001 - no tokenizer: random ids
        import torch

        cfg = json.loads((target / "config.json").read_text())
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(2, int(cfg["vocab_size"]), (lengths[i % len(lengths)],), generator=g).tolist()
                for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default=str(REPO / "models" / "tiny-code"), help="directory with target/ and peagle/")
    ap.add_argument("--target", default=None)
    ap.add_argument("--drafter", default=None)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="verify steps compared per request")
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write raw results here")
    a = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: SGLang's engine needs a GPU (this script is not for CPU machines)", file=sys.stderr)
        return 2
    import sglang

    from pedagle_backends.sglang import runner
    from pedagle_core.engine.backend import ReferenceBackend

    target = Path(a.target or Path(a.family) / "target")
    drafter = Path(a.drafter or Path(a.family) / "peagle")
    K, steps = a.K, a.steps
    prompts = prompts_for(target, a.num_prompts, a.seed)
    max_new = (steps + 1) * (K + 1)
    print(f"sglang {sglang.__version__}, device {torch.cuda.get_device_name(0)}, K={K}, {len(prompts)} prompts, "
          f"{steps} verify steps")

    base = runner.generate(str(target), None, prompts, max_new, K=K, dtype=a.dtype)
    spec = runner.generate(str(target), str(drafter), prompts, max_new, K=K, dtype=a.dtype)
    sg_case = runner.to_case_result(spec, K, steps)
    ref = ReferenceBackend().run_case(str(target), str(drafter), prompts, K=K, mode="parallel", steps=steps,
                                      dtype=a.dtype, device="cuda", seed=a.seed)

    ok = True

    def check(cond: bool, msg: str) -> None:
        nonlocal ok
        ok &= bool(cond)
        print(f"[{'ok' if cond else 'FAIL'}] {msg}")

    check(spec["outputs"] == base["outputs"],
          f"PEAGLE output == target-only output ({len(prompts)} requests, {max_new} tokens each)")
    n_cmp = [len(o) for o in ref["output_ids"]]
    check(all(base["outputs"][b][:n_cmp[b]] == ref["output_ids"][b] for b in range(len(prompts))),
          "target-only output == reference output")
    B = len(prompts)
    pairs = [(s, b) for s in range(steps) for b in range(B)]
    same_d = sum(sg_case["drafts"][s][b] == ref["drafts"][s][b] for s, b in pairs)
    check(same_d == len(pairs), f"drafts equal reference: {same_d}/{len(pairs)} request-steps")
    same_a = sum(sg_case["accepted"][s][b] == ref["accepted"][s][b] for s, b in pairs)
    check(same_a == len(pairs), f"accepted counts equal reference: {same_a}/{len(pairs)} request-steps")
    check(sg_case["accepted_per_position"] == ref["accepted_per_position"],
          f"accepted per position: sglang {sg_case['accepted_per_position']} == reference "
          f"{ref['accepted_per_position']}")
    mean = lambda acc: sum(x or 0 for row in acc for x in row) / max(1, len(pairs))  # noqa: E731
    print(f"mean accepted drafts per step: {mean(sg_case['accepted']):.2f} (sglang) {mean(ref['accepted']):.2f} "
          "(reference)")
    if a.json:
        Path(a.json).write_text(json.dumps({"prompts": prompts, "target_only": base, "peagle": spec,
                                            "sglang_case": sg_case, "reference_case": ref}, default=str))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
