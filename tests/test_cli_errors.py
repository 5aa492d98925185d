"""The CLI's answers to a newcomer's mistakes (issue 15, section 3) and its help pages (section 4): every
mistake ends in one line that names the argument, file or field (exit 2, or 1 for a checkpoint inspect
refuses), never a traceback or a silent success."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from pedagle_core.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-code"
TARGET, PEAGLE = str(TINY / "target"), str(TINY / "peagle")
needs_tiny = pytest.mark.skipif(not (TINY / "target" / "config.json").is_file(), reason="models/tiny-code missing")
GEN = ["generate", "--target", TARGET, "--drafter", PEAGLE, "--device", "cpu", "--max-new-tokens", "2"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); argparse's usage errors come back as their exit 2."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _usage_error(argv: list[str], capsys, *needles: str) -> str:
    rc, out, err = _run(argv, capsys)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


def _copy(src: str, dst: Path, cfg_edit=None, tensors_edit=None) -> str:
    shutil.copytree(src, dst)
    if cfg_edit:
        cfg = json.loads((dst / "config.json").read_text())
        cfg_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    if tensors_edit:
        t = load_file(dst / "model.safetensors")
        tensors_edit(t)
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


# ------------------------------------------------------------------------------------------- tracebacks
@needs_tiny
def test_a_drafter_given_as_target_is_named(capsys):
    _usage_error(["generate", "--target", PEAGLE, "--drafter", PEAGLE, "--prompt-ids", "1,2", "--device", "cpu"],
                 capsys, "peagle/config.json", "marks a drafter checkpoint", "--drafter")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_max_new_tokens_must_be_positive(value, capsys):
    _usage_error([*GEN, "--prompt-ids", "1,2", "--max-new-tokens", value], capsys,
                 "--max-new-tokens", "expected an integer >= 1")


def test_seed_out_of_range(capsys):
    _usage_error([*GEN, "--prompt-ids", "1,2", "--seed", str(2**70)], capsys, "--seed", "2**63 - 1")


@needs_tiny
def test_unknown_device(capsys):
    _usage_error([*GEN, "--prompt-ids", "1,2", "--device", "bogus"], capsys, "--device bogus", "cpu, cuda or cuda:N")


@needs_tiny
def test_prompts_file_not_utf8(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n\xff\xfe{"prompt": "a"}\n')
    _usage_error([*GEN, "--prompts", str(f)], capsys, f"{f}:2: not UTF-8", "byte 0xff")


def test_train_without_data(tmp_path, capsys):
    _usage_error(["train", "--target", TARGET, "--out", str(tmp_path / "o"), "--device", "cpu"], capsys,
                 "--data is required", "sequences.jsonl")
    _usage_error(["train", "--target", TARGET, "--out", str(tmp_path / "o"), "--data", str(tmp_path / "nope.jsonl")],
                 capsys, "nope.jsonl: no such file")
    _usage_error(["train", "--target", TARGET, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")],
                 capsys, "--data is required", f"{tmp_path / 'c' / 'sequences.jsonl'}", "cache dir")


# ------------------------------------------------------------------------------------------- silent successes
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_temperature_must_be_finite(value, capsys):
    _usage_error([*GEN, "--prompt-ids", "1,2", f"--temperature={value}"], capsys, "--temperature", "finite")


@needs_tiny
@pytest.mark.parametrize("ids", [[True, False, True], [], [1, -2], [1, 2.5]])
def test_prompt_ids_must_be_token_ids(ids, tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt_ids": ids}) + "\n")
    _usage_error([*GEN, "--prompts", str(f)], capsys, f"{f}:1: 'prompt_ids' = {json.dumps(ids)}",
                 "non-negative integer token ids")


def test_conformance_run_unknown_backend_is_a_usage_error(capsys):
    err = _usage_error(["conformance", "run", "--backends", "reference,vlm"], capsys, "no backend named 'vlm'",
                       "known backends:", "reference")
    assert "PASS" not in err


@needs_tiny
def test_float64_weights_under_a_bfloat16_config_are_reported(tmp_path):
    from pedagle_core.formats.load import check_target_dir, describe

    to64 = lambda t: t.update({k: v.double() for k, v in t.items() if v.is_floating_point()})  # noqa: E731
    tgt = _copy(TARGET, tmp_path / "t", tensors_edit=to64)
    with pytest.warns(UserWarning, match=r"t/config.json: field 'torch_dtype' = 'bfloat16', but the weights in "
                                         r"model.safetensors are stored as F64"):
        check_target_dir(tgt)
    d = _copy(PEAGLE, tmp_path / "d", tensors_edit=to64)
    msgs = [p["message"] for p in describe(d)["problems"] if p["level"] == "warning"]
    assert any("field 'torch_dtype' = 'bfloat16'" in m and "stored as F64" in m for m in msgs), msgs
    assert not [p for p in describe(PEAGLE)["problems"] if "torch_dtype" in p["message"]]


# ------------------------------------------------------------------------------------------- messages
@needs_tiny
@pytest.mark.parametrize("field", ["hidden_size", "num_key_value_heads"])
def test_config_without_a_size_field_names_the_field(field, tmp_path, capsys):
    from pedagle_core.formats import CheckpointError, load_drafter

    d = _copy(PEAGLE, tmp_path / "d", cfg_edit=lambda c: c.pop(field))
    with pytest.raises(CheckpointError) as e:
        load_drafter(d)
    msg = str(e.value)
    assert msg.startswith(f"{d}/config.json: field(s) '{field}' (assumed ") and "missing" in msg
    assert msg.count("\n") == 0                       # one error, not one per tensor
    rc, out, err = _run(["inspect", d], capsys)
    assert rc == 1 and f"'{field}' (assumed" in out


@needs_tiny
def test_aux_layer_ids_outside_the_target_name_the_config_key(tmp_path, capsys):
    def edit(c):
        c["eagle_aux_hidden_state_layer_ids"] = [2, 4, 50]
        c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [2, 4, 50]

    d = _copy(PEAGLE, tmp_path / "d", cfg_edit=edit)
    err = _usage_error([*GEN, "--drafter", d, "--prompt-ids", "1,2"], capsys,
                       f"{d}/config.json: field 'eagle_aux_hidden_state_layer_ids'", "[50]", "outside [0, 8)")
    assert "aux_layer_ids =" not in err


@needs_tiny
def test_inspect_reports_what_generate_refuses(tmp_path, capsys):
    def poison(t):
        t["fc.weight"][0, 0] = float("nan")
        t["d2t"][5] = 100000

    d = _copy(PEAGLE, tmp_path / "d", tensors_edit=poison)
    rc, out, _ = _run(["inspect", d], capsys)
    assert rc == 1
    assert "tensor 'fc.weight' has 1 non-finite value(s)" in out and "tensor 'd2t' maps draft id 5" in out
    rc, out, _ = _run(["inspect", d, "--headers-only"], capsys)
    assert rc == 0 and "NOT checked (--headers-only)" in out
    rc, out, _ = _run(["inspect", PEAGLE], capsys)
    assert rc == 0 and "values       checked" in out and "error" not in out
    _usage_error([*GEN, "--drafter", d, "--prompt-ids", "1,2"], capsys, "non-finite")   # what generate says


@needs_tiny
def test_depth_warning_once_without_source_lines():
    r = subprocess.run([sys.executable, "-m", "pedagle_core.cli", *GEN, "--prompt-ids", "1,2,3", "-k", "64"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "exceeds the drafter's recorded parallel depth" in x]
    assert len(lines) == 1 and lines[0].startswith("pedagle: warning: K = 64"), r.stderr
    assert "return func(" not in r.stderr and "Warning:" not in r.stderr


# ------------------------------------------------------------------------------------------- --version, --help
def test_version(capsys):
    from pedagle_core import __version__

    rc, out, _ = _run(["--version"], capsys)
    assert rc == 0 and out.startswith(f"pedagle {__version__} (") and "torch" in out and "transformers" in out


def _subparser(*path: str) -> argparse.ArgumentParser:
    p = build_parser()
    for name in path:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = action.choices[name]
    return p


def test_train_help_documents_every_flag():
    p = _subparser("train")
    text = p.format_help()
    assert "``" not in text and "::" not in text                   # no RST
    for a in p._actions:
        if a.option_strings and a.dest != "help":
            assert a.help, f"train {a.option_strings[0]} has no help text"
            if a.default not in (None, False, True, argparse.SUPPRESS):
                assert f"(default: {a.default})" in " ".join(text.split()), a.option_strings[0]
    assert "exit status:" in text


@pytest.mark.parametrize("path", [("generate",), ("bench",), ("inspect",), ("convert",), ("train",),
                                  ("conformance", "record"), ("conformance", "run"), ("conformance", "list")])
def test_help_pages_have_descriptions_and_exit_codes(path):
    p = _subparser(*path)
    assert p.description and len(p.description) > 40, path
    assert "exit status:" in (p.epilog or ""), path
    for a in p._actions:
        if a.option_strings and a.dest != "help":
            assert a.help, f"{' '.join(path)} {a.option_strings[0]} has no help text"
    assert "exit status" in build_parser().format_help()


def test_generate_help_says_finish_reason_is_per_output():
    text = _subparser("generate").format_help()
    assert '"finish_reason": "length" | "stop",     per output' in text
    assert "finish_reasons" not in text


def test_bench_plot_title_names_device_batch_prompts_and_k():
    from pedagle_core.engine.cli import plot_title

    meta = {"device": "cpu (x86_64, 2 threads)", "batch_size": 8, "num_prompts": 20, "max_new_tokens": 64,
            "dtype": "auto"}
    assert plot_title(meta, [1, 3, 5, 7]) == "cpu (x86_64, 2 threads), batch size 8, 20 prompts x 64 tokens, K 1..7, auto"
    assert "K 3," in plot_title(meta, [3])


@needs_tiny
def test_prompt_ids_argument_rejects_negative_ids(capsys):
    _usage_error([*GEN, "--prompt-ids", "1,-2"], capsys, "--prompt-ids", "negative")


# ------------------------------------------------------------------------------------------- library level
def test_kv_cache_and_engine_arguments_are_checked():
    from pedagle_core.attention import ContiguousKVCache

    with pytest.raises(ValueError, match=r"max_seq_len = -3; expected an integer >= 1"):
        ContiguousKVCache(2, 1, -3, 2, 8)
    assert ContiguousKVCache(2, 1, 4, 2, 8).k.shape == (2, 4, 2, 8)


@needs_tiny
def test_engine_generate_checks_its_arguments():
    from pedagle_core.engine.engine import SpecEngine
    from pedagle_core.engine.target import EngineError, TargetModel, load_hf_target

    eng = SpecEngine(TargetModel(load_hf_target(TARGET, dtype="float32")), None, mode="none", K=1)
    for kw, msg in ((dict(max_new_tokens=-5), "max_new_tokens = -5"), (dict(max_new_tokens=2, seed=2**70), "seed = "),
                    (dict(max_new_tokens=2, seed=-1), "seed = -1")):
        with pytest.raises(EngineError, match=msg):
            eng.generate([[1, 2]], **kw)
    assert eng.generate([[1, 2]], max_new_tokens=0).output_ids == [[]]   # the library's documented 0 (the CLI: >= 1)
    with pytest.raises(EngineError, match="booleans"):
        eng.generate([[True, False, True]], max_new_tokens=2)
    assert len(eng.generate([[1, 2]], max_new_tokens=2).output_ids[0]) == 2
