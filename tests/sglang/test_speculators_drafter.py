"""A speculators-format drafter under ``--speculative-algorithm PEAGLE``: SGLang reads the drafter's config.json
with transformers (``get_config``) while it resolves the speculative arguments, and a speculators config has no
``model_type``. The plugin's resolution step converts such a drafter once into pedagle's cache (vLLM format,
tensor for tensor) and points ``speculative_draft_model_path`` at the copy; a vLLM-format drafter is left alone.
Runs SGLang's real server-argument resolution (0.5.23: ``ServerArgs.resolve_once``; 0.5.17: ``__post_init__``; no engine start)."""

from __future__ import annotations

import pytest
import torch

from tiny import save_checkpoint, save_target_config, tiny_drafter

pytestmark = pytest.mark.sglang_versions          # part of the --sglang-cases versions subset


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from sglang.srt.plugins import load_plugins

    load_plugins()
    root = tmp_path_factory.mktemp("spec")
    drafter = tiny_drafter(parallel_depth=3)
    save_checkpoint(drafter, root / "spec_drafter", fmt="speculators")
    save_checkpoint(drafter, root / "vllm_drafter", fmt="vllm")
    save_target_config(root / "target")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEDAGLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "converted"


def resolve(paths, drafter: str, algorithm: str = "peagle"):
    from sglang.srt.server_args import ServerArgs

    from pedagle_backends.sglang.compat import resolved_server_args

    sa = ServerArgs(model_path=str(paths / "target"), speculative_algorithm=algorithm,
                    speculative_draft_model_path=str(paths / drafter), device="cpu", skip_tokenizer_init=True,
                    speculative_num_draft_tokens=4)
    return sa, resolved_server_args(sa)


def _tensors(path):
    from pedagle_core.formats import load_checked_tensors, prepare

    return load_checked_tensors(prepare(path))


def test_speculators_drafter_is_served_from_a_converted_vllm_copy(paths, cache, caplog):
    from pedagle_core.formats import detect_format, read_config

    assert detect_format(paths / "spec_drafter") == "speculators"
    with caplog.at_level("INFO", logger="pedagle.sglang"):
        sa, v = resolve(paths, "spec_drafter")
    served = v.speculative_draft_model_path
    assert served != str(paths / "spec_drafter")
    assert served.startswith(str(cache)), served
    assert detect_format(served) == "vllm"
    from pedagle_backends.sglang import compat

    if compat.has_resolution_hooks():         # 0.5.23 records resolutions: the operator's input is kept
        assert sa.speculative_draft_model_path == str(paths / "spec_drafter")
    else:                                     # 0.5.17 resolves on the ServerArgs itself
        assert sa is v
    assert v.speculative_algorithm == "PEAGLE" and v.speculative_num_steps == 3
    lines = [r.getMessage() for r in caplog.records if "speculators" in r.getMessage()]
    assert len(lines) == 1 and str(paths / "spec_drafter") in lines[0] and served in lines[0], lines
    # lossless: the same config and the same tensors, bit for bit
    assert read_config(served)[0] == read_config(paths / "spec_drafter")[0]
    src, dst = _tensors(paths / "spec_drafter"), _tensors(served)
    assert sorted(src) == sorted(dst)
    for name in src:
        assert src[name].dtype == dst[name].dtype and torch.equal(src[name], dst[name]), name


def test_conversion_is_cached_by_content(paths, cache):
    import os

    _, v1 = resolve(paths, "spec_drafter")
    first = v1.speculative_draft_model_path
    stamp = os.stat(os.path.join(first, "config.json")).st_mtime_ns
    _, v2 = resolve(paths, "spec_drafter")
    assert v2.speculative_draft_model_path == first                           # reused, not converted again
    assert os.stat(os.path.join(first, "config.json")).st_mtime_ns == stamp
    assert len([p for p in cache.iterdir()]) == 1                             # no temporary directories left
    weights = next((paths / "spec_drafter").glob("*.safetensors"))
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))            # the source changed (mtime)
    _, v3 = resolve(paths, "spec_drafter")
    assert v3.speculative_draft_model_path != first and len(list(cache.iterdir())) == 2


def test_draft_model_config_of_the_converted_copy_routes_to_pedagle(paths, cache):
    from sglang.srt.configs.model_config import ModelConfig

    from pedagle_backends.sglang.model import ARCHITECTURE

    sa, v = resolve(paths, "spec_drafter")
    mc = ModelConfig.from_server_args(sa, model_path=v.speculative_draft_model_path, is_draft_model=True)
    assert mc.hf_config.architectures == [ARCHITECTURE]


def test_vllm_format_drafter_is_left_alone(paths, cache):
    _, v = resolve(paths, "vllm_drafter")
    assert v.speculative_draft_model_path == str(paths / "vllm_drafter")
    assert not cache.exists()


def test_other_algorithms_are_not_touched(paths, cache):
    from pedagle_backends.sglang.spec_algo import served_drafter_path

    # only PEAGLE's resolution converts; the function itself leaves non-directories alone
    assert served_drafter_path("org/some-hub-id") == "org/some-hub-id"
    with pytest.raises(ValueError, match="Unrecognized model"):               # SGLang's EAGLE3 cannot read it
        resolve(paths, "spec_drafter", algorithm="EAGLE3")
    assert not cache.exists()
