"""Prompt sources of the trainer: JSONL, JSON and Parquet give the same records."""

import json

import pytest

from pedagle_core.train.data import load_prompt_records

RECORDS = [{"prompt": "def f(x):\n"}, {"prompt": "class A:\n    pass\n"}, {"text": "import os\n"}]


def test_jsonl_json_and_parquet_give_the_same_records(tmp_path):
    import pyarrow as pa  # the dev extra installs it
    import pyarrow.parquet as pq

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    js = tmp_path / "p.json"
    js.write_text(json.dumps(RECORDS))
    pqf = tmp_path / "p.parquet"
    rows = [{"prompt": r.get("prompt"), "text": r.get("text")} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), pqf)

    want = RECORDS
    assert load_prompt_records(str(jsonl)) == want
    assert load_prompt_records(str(js)) == want
    got = [{k: v for k, v in r.items() if v is not None} for r in load_prompt_records(str(pqf))]
    assert got == want
    assert load_prompt_records(str(pqf), limit=2)[1]["prompt"] == "class A:\n    pass\n"


def test_missing_file_and_bad_line_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data .*nope.jsonl: no such file"):
        load_prompt_records(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{not json}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not a JSON object"):
        load_prompt_records(str(bad))


def test_hf_datasets_source_reads_a_local_dataset_directory(tmp_path, monkeypatch):
    """``hf:NAME[:SPLIT]`` goes through ``datasets.load_dataset`` (here a local data directory, offline)."""
    pytest.importorskip("datasets")                   # the dev extra installs it
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n")
    (d / "test.jsonl").write_text(json.dumps({"prompt": "held out\n"}) + "\n")
    got = load_prompt_records(f"hf:{d}")
    assert [r["prompt"] for r in got] == [RECORDS[0]["prompt"], RECORDS[1]["prompt"]]
    assert load_prompt_records(f"hf:{d}:test") == [{"prompt": "held out\n"}]
    assert len(load_prompt_records(f"hf:{d}", limit=1)) == 1
