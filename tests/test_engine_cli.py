"""`pedagle generate` / `pedagle bench` (driven through the engine CLI module's own parser)."""

import argparse
import json

import pytest
import torch

from helpers_models import bigram_target, fast_cpu, oracle_drafter, tiny_drafter, tiny_target  # noqa: F401
from pedagle_core.engine import cli

pytestmark = [pytest.mark.usefixtures("fast_cpu"), pytest.mark.filterwarnings("ignore:K = .* exceeds")]


def run(argv, capsys):
    p = argparse.ArgumentParser(prog="pedagle")
    cli.add_parser(p.add_subparsers())
    args = p.parse_args(argv)
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from pedagle_core.formats import save_drafter

    root = tmp_path_factory.mktemp("cli")
    model, succ = bigram_target("llama", seed=1, dtype=torch.float32)
    model.save_pretrained(root / "target")
    save_drafter(oracle_drafter(model, succ, accuracy=0.6, seed=3), root / "drafter")
    save_drafter(tiny_drafter(tiny_target("llama", vocab_size=64, dtype=torch.float32)), root / "bad_drafter")
    with open(root / "prompts.jsonl", "w") as fh:
        for p in ([5, 6, 7], [8, 9, 10, 11, 12]):
            fh.write(json.dumps({"prompt_ids": p}) + "\n")
        fh.write("[40, 41]\n")
    ref_model = model.double()
    ref = [ref_model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(p):].tolist() for p in ([5, 6, 7], [8, 9, 10, 11, 12], [40, 41])]
    return root, ref


def test_generate_json(dirs, capsys):
    root, ref = dirs
    for mode in ("parallel", "autoregressive", "none"):
        rc, out, err = run(["generate", "--target", str(root / "target"), "--drafter", str(root / "drafter"),
                            "--mode", mode, "-k", "4", "--prompts", str(root / "prompts.jsonl"),
                            "--max-new-tokens", "12", "--dtype", "float64", "--ignore-eos", "--json",
                            "--batch-size", "2"], capsys)
        assert rc == 0, err
        res = json.loads(out)
        assert [o["output_ids"] for o in res["outputs"]] == ref
        m = res["metrics"]
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "accepted_per_position",
                    "mean_acceptance_length", "tokens_per_s", "target_time_s", "draft_time_s", "draft_fraction",
                    "steps"):
            assert key in m
        assert (m["num_drafts"] > 0) == (mode != "none")


def test_generate_streams_text_and_reports_errors(dirs, capsys):
    root, ref = dirs
    rc, out, err = run(["generate", "--target", str(root / "target"), "--drafter", str(root / "drafter"),
                        "--prompt-ids", "5,6,7", "--max-new-tokens", "12", "--dtype", "float64", "--ignore-eos",
                        "-k", "3"], capsys)
    assert rc == 0 and out.split() == [str(t) for t in ref[0]]      # no tokenizer: ids are streamed
    assert "acceptance length" in err
    rc, out, err = run(["generate", "--target", str(root / "target"), "--drafter", str(root / "bad_drafter"),
                        "--prompt-ids", "5", "--mode", "autoregressive"], capsys)
    assert rc == 2 and "vocab_size" in err
    rc, out, err = run(["generate", "--target", str(root / "target"), "--prompt", "hello"], capsys)
    assert rc == 2 and "--drafter" in err
    rc, out, err = run(["generate", "--target", str(root / "target"), "--mode", "none", "--prompt", "hi"], capsys)
    assert rc == 2 and "tokenizer" in err


def test_bench_writes_json_table_and_plot(dirs, capsys, tmp_path):
    root, _ = dirs
    rc, out, err = run(["bench", "--target", str(root / "target"), "--drafter", str(root / "drafter"),
                        "--prompts", str(root / "prompts.jsonl"), "-k", "1,3", "--modes", "parallel,autoregressive,none",
                        "--max-new-tokens", "10", "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png"),
                        "--ignore-eos"], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert [(r["mode"], r["K"]) for r in res["runs"]] == [("parallel", 1), ("parallel", 3), ("autoregressive", 1),
                                                          ("autoregressive", 3), ("none", 0)]
    assert {"date", "device", "commit", "torch"} <= set(res["meta"])
    assert all(r["speedup_vs_none"] > 0 for r in res["runs"])
    assert "accept len" in out and (tmp_path / "p.png").stat().st_size > 1000
    rc, out, err = run(["bench", "--target", str(root / "target"), "--drafter", str(root / "drafter"),
                        "--prompts", str(root / "prompts.jsonl"), "--modes", "fast", "--out", str(tmp_path / "x.json")],
                       capsys)
    assert rc == 2 and "--modes" in err


def test_heldout_prompts_cut_and_repeat(tmp_path):
    """Held-out prompts of the bundled target at chosen lengths (shorter lines repeated), and the error for a
    directory without them."""
    from pathlib import Path

    from pedagle_core.engine.prompts import heldout_prompts

    target = Path(__file__).resolve().parents[1] / "models" / "tiny-code" / "target"
    got = heldout_prompts(target, [4, 300, 9], start=1)
    assert [len(p) for p in got] == [4, 300, 9]
    assert got[1][:4] != got[0] and got[2][:4] == heldout_prompts(target, [4], start=3)[0]
    with pytest.raises(FileNotFoundError, match="heldout_prompts.jsonl"):
        heldout_prompts(tmp_path, [3])
