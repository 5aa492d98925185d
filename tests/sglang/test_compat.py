"""`pedagle_backends.sglang.compat` against the installed SGLang (0.5.17 or 0.5.23): every helper, with the
branch that applies asserted from the feature itself (hasattr / signature / module presence), and both branches
of the pure ones on stand-ins. Part of the ``--sglang-cases versions`` subset (CI: SGLang 0.5.17 and 0.5.23).
"""

from __future__ import annotations

import importlib.util
import inspect
from types import SimpleNamespace

import pytest
import torch

import subset
from pedagle_backends.sglang import compat, plugin

pytestmark = pytest.mark.sglang_versions
assert subset.MARK == "sglang_versions"


@pytest.fixture(scope="module")
def loaded():
    from sglang.srt.plugins import load_plugins

    load_plugins()
    assert plugin.is_registered()
    return True


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- plugin hooks
def test_slot_reserve_target_follows_the_allocator():
    from sglang.srt.managers.schedule_policy import PrefillAdder
    from sglang.srt.mem_cache.allocator.base import BaseTokenToKVPoolAllocator

    target = compat.slot_reserve_target()
    if hasattr(BaseTokenToKVPoolAllocator, "request_slot_reserve"):                    # 0.5.23
        assert target == compat.SLOT_RESERVE_TARGETS[0]
    else:                                                                               # 0.5.17
        assert target == compat.SLOT_RESERVE_TARGETS[1]
        assert "req" in inspect.signature(PrefillAdder._mamba_gap_budget_for_req).parameters
    assert callable(compat.resolve_target(target))


def test_resolve_target_names_what_is_missing():
    with pytest.raises(AttributeError, match="hook target sglang.srt.mem_cache.allocation_sizing.no_such_fn"):
        compat.resolve_target("sglang.srt.mem_cache.allocation_sizing.no_such_fn")
    with pytest.raises(ImportError, match="hook target sglang_no_such_pkg.x"):
        compat.resolve_target("sglang_no_such_pkg.x")


def test_speculative_step_wrapper_is_installed_where_the_release_allows(loaded):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from pedagle_backends.sglang.spec_algo import serve_speculators_drafter_converted

    has = _has_module("sglang.srt.arg_groups.resolution_hooks")
    assert compat.has_resolution_hooks() is has
    if has:                                                                             # 0.5.23
        from sglang.srt.arg_groups import resolution_hooks

        assert serve_speculators_drafter_converted in resolution_hooks._HOOKS[plugin.RESOLUTION_STEP]
        assert compat.SPECULATIVE_STEP_TARGET not in HookRegistry._patched
    else:                                                                               # 0.5.17
        from sglang.srt.arg_groups import speculative_hook

        assert compat.SPECULATIVE_STEP_TARGET in HookRegistry._patched
        assert speculative_hook.handle_speculative_decoding.__name__ != "handle_speculative_decoding" or \
            getattr(speculative_hook.handle_speculative_decoding, "__wrapped__", None) is not None


def test_step_wrapper_on_the_hook_registry_calls_the_step_after_the_wrapper(monkeypatch):
    """0.5.17's form (a HookRegistry AROUND hook), exercised on any release with a private registry."""
    from sglang.srt.plugins import hook_registry

    registered = []
    monkeypatch.setattr(compat, "has_resolution_hooks", lambda: False)
    monkeypatch.setattr(hook_registry.HookRegistry, "register",
                        classmethod(lambda cls, target, fn, kind: registered.append((target, fn, kind))))
    order = []

    def wrapper(sa, previous):
        order.append(("wrapper", sa.x))
        sa.x = 2
        previous(sa)

    compat.register_speculative_step_wrapper(wrapper)
    (target, around, kind), = registered
    assert target == compat.SPECULATIVE_STEP_TARGET and kind == hook_registry.HookType.AROUND
    sa = SimpleNamespace(x=1)
    around(lambda s: order.append(("step", s.x)), sa)
    assert order == [("wrapper", 1), ("step", 2)]


def test_resolving_view_and_declare_resolution():
    has = _has_module("sglang.srt.arg_groups.model_override_base")
    if not has:                                                                         # 0.5.17: the object itself
        ns = SimpleNamespace(speculative_draft_model_path="a")
        assert compat.resolving_view(ns) is ns
        compat.declare_resolution(ns, "pedagle.test", speculative_draft_model_path="b")
        assert ns.speculative_draft_model_path == "b"
    else:                                                                               # 0.5.23: SGLang's own
        from sglang.srt.arg_groups.model_override_base import resolving_view
        from sglang.srt.arg_groups.overrides import declare_resolution

        assert compat.resolving_view.__doc__ and resolving_view and declare_resolution


def test_resolved_server_args(loaded, tmp_path):
    from sglang.srt.server_args import ServerArgs

    from tiny import save_target_config

    save_target_config(tmp_path / "target")
    sa = ServerArgs(model_path=str(tmp_path / "target"), device="cpu", skip_tokenizer_init=True)
    view = compat.resolved_server_args(sa)
    if hasattr(ServerArgs, "resolve_once"):                                             # 0.5.23
        assert view is not sa
    else:                                                                               # 0.5.17
        assert view is sa
    assert view.model_path == str(tmp_path / "target") and view.attention_backend is not None


def test_load_default_models():
    from sglang.srt.models.registry import ModelRegistry

    compat.load_default_models(ModelRegistry)
    assert "LlamaForCausalLM" in ModelRegistry.models and "Qwen3ForCausalLM" in ModelRegistry.models
    calls = []
    compat.load_default_models(SimpleNamespace(_load_default_models=lambda: calls.append(1)))
    compat.load_default_models(SimpleNamespace())                                       # 0.5.17: nothing to do
    assert calls == [1]


def test_hook_server_args():
    sa = SimpleNamespace()
    assert compat.hook_server_args((), {}) is None
    assert compat.hook_server_args((sa,), {}) is sa
    assert compat.hook_server_args((), {"server_args": sa}) is sa


def test_alloc_reserve_per_decode(loaded, monkeypatch):
    from sglang.srt.mem_cache import allocation_sizing

    takes = "server_args" in inspect.signature(allocation_sizing.get_alloc_reserve_per_decode).parameters
    if takes:                                                                           # 0.5.17
        sa = SimpleNamespace(speculative_algorithm="EAGLE3", speculative_num_steps=3, speculative_eagle_topk=1,
                             max_speculative_num_draft_tokens=4, page_size=1)
        assert compat.alloc_reserve_per_decode(sa) == 2 * 4                # SGLang's: 2 x max(steps, tokens)
        sa.speculative_algorithm = "PEAGLE"
        assert compat.alloc_reserve_per_decode(sa) == 2 * 6                # the plugin's hook on these args: 2K
    else:                                                                               # 0.5.23: the bags
        monkeypatch.setattr(allocation_sizing, "get_alloc_reserve_per_decode", lambda: 11)
        assert compat.alloc_reserve_per_decode(SimpleNamespace()) == 11
        assert compat.alloc_reserve_per_decode() == 11


def test_row_extra_hook_reads_the_server_args_it_is_given(loaded, monkeypatch):
    """0.5.17 passes the ServerArgs being sized to the sizing functions; PEAGLE is recognised from them."""
    monkeypatch.setattr(compat, "alloc_reserve_per_decode", lambda sa=None: 14)
    peagle = SimpleNamespace(speculative_algorithm="PEAGLE", speculative_num_steps=4)
    other = SimpleNamespace(speculative_algorithm="EAGLE3", speculative_num_steps=4)
    assert plugin._row_extra_hook(lambda sa: 9, peagle) == 18
    assert plugin._row_extra_hook(lambda sa: 9, other) == 9
    assert plugin._alloc_len_hook(lambda sa: 5, peagle) == 8                       # 2K for K = 4
    assert plugin._alloc_len_hook(lambda server_args: 5, server_args=other) == 5


# ---------------------------------------------------------------------------------------------- worker
def test_worker_init_takes_ps():
    from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2, EagleDraftWorker

    takes = "ps" in inspect.signature(EAGLEWorkerV2.__init__).parameters
    assert compat.worker_init_takes_ps(EAGLEWorkerV2) is takes
    assert compat.worker_init_takes_ps(EagleDraftWorker) is takes                      # the two move together


def test_init_eagle_draft_worker_passes_ps_only_where_taken():
    seen = {}

    class WithPs:
        def __init__(self, server_args, gpu_id, ps, nccl_port, target_worker):
            seen["with"] = (server_args, gpu_id, ps, nccl_port, target_worker)

    class WithoutPs:
        def __init__(self, server_args, gpu_id, nccl_port, target_worker):
            seen["without"] = (server_args, gpu_id, nccl_port, target_worker)

    compat.init_eagle_draft_worker(WithPs, object.__new__(WithPs), "sa", 0, 123, "tw", ps="ps")
    compat.init_eagle_draft_worker(WithoutPs, object.__new__(WithoutPs), "sa", 0, 123, "tw", ps="ps")
    assert seen == {"with": ("sa", 0, "ps", 123, "tw"), "without": ("sa", 0, 123, "tw")}
    with pytest.raises(TypeError, match="ParallelState 'ps'"):
        compat.init_eagle_draft_worker(WithPs, object.__new__(WithPs), "sa", 0, 123, "tw")


def test_draft_backend_factory():
    from sglang.srt.speculative.draft_utils import DraftBackendFactory

    first = next(iter(list(inspect.signature(DraftBackendFactory.__init__).parameters)[1:]))
    assert first in ("server_args", "draft_model_runner")            # 0.5.17 / 0.5.23

    class Old:
        def __init__(self, server_args, draft_model_runner, topk, speculative_num_steps):
            self.args = (server_args, draft_model_runner, topk, speculative_num_steps)

    class New:
        def __init__(self, draft_model_runner, topk, speculative_num_steps, qsa_profile=None):
            self.args = (draft_model_runner, topk, speculative_num_steps)

    assert compat.draft_backend_factory(Old, "sa", "runner", 1, 3).args == ("sa", "runner", 1, 3)
    assert compat.draft_backend_factory(New, "sa", "runner", 1, 3).args == ("runner", 1, 3)


def test_shared_embed_and_head():
    target = SimpleNamespace(model_runner=SimpleNamespace(model=SimpleNamespace(get_embed_and_head=lambda: ("e", "h"))))
    old = SimpleNamespace(target_worker=target)
    new = SimpleNamespace(target_worker=target, _resolve_shared_embed_and_head=lambda: ("E", "H"))
    assert compat.shared_embed_and_head(old) == ("e", "h")
    assert compat.shared_embed_and_head(new) == ("E", "H")


def test_kv_index_translating():
    assert compat.kv_index_translating(SimpleNamespace()) is False               # 0.5.17: no translator
    assert compat.kv_index_translating(SimpleNamespace(kv_index_translator=SimpleNamespace(is_translating=False))) \
        is False
    assert compat.kv_index_translating(SimpleNamespace(kv_index_translator=SimpleNamespace(is_translating=True)))


def test_draft_extend_kwargs():
    from sglang.srt.speculative.eagle_worker_common import prepare_for_draft_extend

    takes = "kv_loc_plan" in inspect.signature(prepare_for_draft_extend).parameters   # 0.5.23 yes, 0.5.17 no
    assert compat.draft_extend_kwargs(prepare_for_draft_extend) == ({"kv_loc_plan": None} if takes else {})


def test_prefix_sharing():
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache

    has = hasattr(BasePrefixCache, "supports_prefix_sharing")                   # 0.5.23 yes, 0.5.17 no
    assert compat.prefix_sharing(None) is False
    assert compat.prefix_sharing(SimpleNamespace(supports_prefix_sharing=lambda: True)) is True
    assert compat.prefix_sharing(SimpleNamespace(supports_prefix_sharing=lambda: False)) is False
    assert compat.prefix_sharing(SimpleNamespace(is_tree_cache=lambda: True, disable=False)) is True
    assert compat.prefix_sharing(SimpleNamespace(is_tree_cache=lambda: True, disable=True)) is False
    assert compat.prefix_sharing(SimpleNamespace(is_tree_cache=lambda: False, disable=True)) is False


# ---------------------------------------------------------------------------------------------- CPU engine
def test_keep_intel_amx_attention(monkeypatch):
    from sglang.srt import runtime_context

    if hasattr(runtime_context, "override_platform"):                                  # 0.5.23
        installed = []

        class Override:
            def __init__(self, **facts):
                self.facts = facts

            def install(self):
                installed.append(self.facts)

        monkeypatch.setattr(runtime_context, "override_platform", Override)
        monkeypatch.setattr(runtime_context, "get_platform", lambda: SimpleNamespace(has_amx=False))
        assert compat.keep_intel_amx_attention() == "override_platform"
        assert installed == [{"has_amx": True}]
    else:                                                                               # 0.5.17
        from sglang.srt.arg_groups import overrides
        from sglang.srt.utils import common

        monkeypatch.setattr(overrides, "cpu_has_amx_support", overrides.cpu_has_amx_support)  # restored after
        view = SimpleNamespace(attention_backend="intel_amx", device="cpu")
        if not common.cpu_has_amx_support():
            assert overrides._attention_backend_platform_fallbacks(view) == {"attention_backend": "torch_native"}
        assert compat.keep_intel_amx_attention() == "overrides.cpu_has_amx_support"
        assert overrides._attention_backend_platform_fallbacks(view) == {}          # intel_amx is kept
        assert common.cpu_has_amx_support is not overrides.cpu_has_amx_support      # the layers still ask the CPU


def _amx_backend_for_extend(num_tokens: int, seq_lens_pre: torch.Tensor, n: int):
    """An IntelAMXAttnBackend without an engine (attributes its forward_extend reads), a spy for the kernel, and
    a TARGET_VERIFY forward batch whose verify extends each request by ``n`` tokens."""
    from sglang.srt.layers.attention.intel_amx_backend import IntelAMXAttnBackend

    calls = []
    be = object.__new__(IntelAMXAttnBackend)
    kv = torch.zeros(64, 1, 4)
    attrs = dict(token_to_kv_pool=SimpleNamespace(get_key_buffer=lambda i: kv, get_value_buffer=lambda i: kv),
                 req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(4, 32, dtype=torch.int32)),
                 extend_metadata=(seq_lens_pre + n, torch.full_like(seq_lens_pre, n), torch.zeros_like(seq_lens_pre),
                                  None),
                 forward_metadata=(None, n), extend_attention_fwd=lambda *a: calls.append(a),
                 use_sliding_window_kv_pool=False, swa_out_cache_loc=None, use_mla=False, _swa_req_to_token=None)
    for name, value in attrs.items():
        object.__setattr__(be, name, value)
    layer = SimpleNamespace(qk_head_dim=4, v_head_dim=4, tp_q_head_num=1, tp_k_head_num=1, is_cross_attention=False,
                            layer_id=0, scaling=0.5, logit_cap=0.0, sliding_window_size=-1, k_scale_float=None,
                            v_scale_float=None, attn_type=None)
    fb = SimpleNamespace(forward_mode=SimpleNamespace(is_target_verify=lambda: True), seq_lens=seq_lens_pre,
                         req_pool_indices=torch.arange(len(seq_lens_pre)), encoder_lens=None,
                         out_cache_loc=torch.arange(num_tokens))
    return be, layer, fb, calls


def test_cpu_verify_attention_sees_the_verify_lengths():
    """SGLang's CPU attention in a TARGET_VERIFY pass hands the kernel the lengths after the verify rows (0.5.23
    does; 0.5.17 passes the pre-verify ones, and `compat.fix_cpu_verify_lengths` makes it pass these)."""
    from sglang.srt.layers.attention import intel_amx_backend

    src = inspect.getsource(intel_amx_backend.IntelAMXAttnBackend.forward_extend)
    buggy = compat.verify_attention_reads_pre_verify_lens()
    assert buggy is ("seq_lens = forward_batch.seq_lens" in src or
                     "_pedagle_verify_lens" in dir(intel_amx_backend.IntelAMXAttnBackend.forward_extend))
    assert compat.fix_cpu_verify_lengths() is buggy
    pre, n = torch.tensor([5, 9]), 4
    be, layer, fb, calls = _amx_backend_for_extend(2 * n, pre, n)
    q = torch.randn(2 * n, 4)
    be.forward_extend(q, None, None, layer, fb, save_kv_cache=False)
    (args,) = calls
    lens = [a for a in args if isinstance(a, torch.Tensor) and a.shape == pre.shape and a.dtype == torch.int64
            and not torch.equal(a, fb.req_pool_indices)]
    assert any(torch.equal(a, pre + n) for a in lens), lens                 # the verify's own lengths
    assert not any(torch.equal(a, pre) for a in lens), lens                 # never the pre-verify ones
    assert fb.seq_lens is pre                                               # the batch is left as it was


def test_register_is_all_or_nothing(loaded, monkeypatch):
    """A hook target that cannot be resolved: register() raises naming it and registers nothing (the algorithm,
    the HookRegistry hooks and the server-argument step all untouched); then, resolvable, it registers all."""
    from collections import defaultdict

    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.speculative import spec_registry

    monkeypatch.setattr(spec_registry, "_REGISTRY", {})
    monkeypatch.setattr(HookRegistry, "_hooks", defaultdict(list))
    if compat.has_resolution_hooks():
        from sglang.srt.arg_groups import resolution_hooks

        monkeypatch.setattr(resolution_hooks, "_HOOKS", {})
    monkeypatch.setattr(plugin, "_registered", False)
    real = plugin.hook_targets
    monkeypatch.setattr(plugin, "hook_targets",
                        lambda: {**real(), "row_extra": "sglang.srt.mem_cache.allocation_sizing.no_such_sizing"})
    with pytest.raises(ImportError, match="registered nothing.*no_such_sizing"):
        plugin.register()
    assert spec_registry._REGISTRY == {} and dict(HookRegistry._hooks) == {}
    if compat.has_resolution_hooks():
        assert resolution_hooks._HOOKS == {}
    assert plugin.is_registered() is False

    monkeypatch.setattr(plugin, "hook_targets", real)
    plugin.register()
    assert plugin.is_registered() and "PEAGLE" in spec_registry._REGISTRY
    assert set(real().values()) <= set(HookRegistry._hooks)


def test_register_all_or_nothing_on_a_failing_import(loaded, monkeypatch):
    """An import of pedagle's own modules failing inside register(): nothing registered, the error says what."""
    import builtins
    from collections import defaultdict

    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.speculative import spec_registry

    monkeypatch.setattr(spec_registry, "_REGISTRY", {})
    monkeypatch.setattr(HookRegistry, "_hooks", defaultdict(list))
    monkeypatch.setattr(plugin, "_registered", False)
    real_import = builtins.__import__

    def failing(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and name == "spec_algo":
            raise ImportError("simulated: spec_algo cannot be imported")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(ImportError, match="registered nothing.*spec class.*simulated"):
        plugin.register()
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert spec_registry._REGISTRY == {} and dict(HookRegistry._hooks) == {} and not plugin.is_registered()
