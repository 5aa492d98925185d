"""``pedagle conformance run``: every case on every requested backend, compared step by step.

Backends are found through the pluggy plugin manager (`pedagle_core.registry.get_plugin_manager`: the
``pedagle.backends`` entry points, plus ``--plugin NAME=module:attr`` extras). Two levels:

* ``e2e``: the backend runs the whole case through its engine (``pedagle_run_case``; the ``vllm``
  backend's cases run batched in one vLLM child process, `vllm_batch`) and the result is compared with
  the recorded expectation (`compare.compare_e2e`). Where a request desynchronises (its acceptance
  differs, e.g. after a near-tie), the runner re-synchronises: the reference (live) and the backend are
  both re-run on the prompt extended by the reference's tokens up to that step, for the steps that
  were left, and compared again (``max_resync`` rounds). Mismatches found there carry their original
  step / request numbers and the round.
* ``step-state``: the recorded step inputs of the case go straight into the backend's drafting path
  (``pedagle_replay_steps`` if the backend implements it; else the runner's adapters: reference =
  `pedagle_core.draft` on the reference cache, sglang = `sglang_steps`), compared per step
  (`compare.compare_steps`). vLLM: end to end only (its drafting runs inside vLLM's worker).

A backend/case that cannot run is reported as ``not run`` with the reason, never as a pass.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .case import Case
from .compare import Comparison, compare_e2e, compare_steps, Mismatch, resync_prompt

LEVELS = ("e2e", "step-state")
VLLM_STEP_STATE_REASON = ("e2e only: vLLM's drafting runs inside its engine worker (proposer buffers, attention "
                          "metadata and paged KV cache are built by vLLM's scheduler); feeding it a recorded step "
                          "state is not practical")


@dataclass
class Outcome:
    case: str
    backend: str
    level: str
    status: str                           # identical | near-ties | failed | error | not run
    reason: str = ""
    tie: float | None = None
    comparison: Comparison | None = None
    seconds: float = 0.0
    detail: str = ""                      # what ran (step-state level), or extra information
    resync_rounds: int = 0

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "error")

    def finish(self) -> "Outcome":
        c = self.comparison
        if self.status == "error" or c is None:
            return self
        self.status = "failed" if c.failures else ("near-ties" if c.near_ties else "identical")
        return self

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        d = {"case": self.case, "backend": self.backend, "level": self.level, "status": self.status,
             "reason": self.reason, "tie_margin": self.tie, "seconds": round(self.seconds, 3), "detail": self.detail,
             "resync_rounds": self.resync_rounds}
        if c is not None:
            d.update(drafts_compared=c.drafts_compared, drafts_uncompared=c.drafts_uncompared,
                     steps_compared=c.steps_compared,
                     failures=[m.to_dict() for m in sorted(c.failures, key=Mismatch.sort_key)],
                     near_ties=[m.to_dict() for m in sorted(c.near_ties, key=Mismatch.sort_key)])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Outcome":
        """The inverse of `to_dict` (an outcome reported by a child run in another interpreter)."""
        o = cls(d["case"], d["backend"], d["level"], d["status"], d.get("reason", ""), d.get("tie_margin"),
                None, float(d.get("seconds") or 0.0), d.get("detail", ""), int(d.get("resync_rounds") or 0))
        if "drafts_compared" in d:
            o.comparison = Comparison([Mismatch(**m) for m in (d.get("failures") or []) + (d.get("near_ties") or [])],
                                      d["drafts_compared"], d.get("drafts_uncompared", 0), d.get("steps_compared", 0))
        return o


@dataclass
class Report:
    outcomes: list[Outcome]
    backends: dict[str, dict[str, Any]]
    cases: list[str]
    levels: list[str]
    device: str | None = None
    require_all: bool = False
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def passed(self) -> bool:
        if any(o.failed for o in self.outcomes):
            return False
        if self.require_all and any(o.status == "not run" for o in self.outcomes):
            return False
        return True

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "exit_code": self.exit_code, "levels": self.levels, "device": self.device,
                "require_all": self.require_all, "cases": self.cases, "backends": self.backends,
                "summary": {s: self.count(s) for s in ("identical", "near-ties", "failed", "error", "not run")},
                "outcomes": [o.to_dict() for o in self.outcomes], "notes": self.notes}


# ---------------------------------------------------------------------------------------------- backends
def plugin_manager(extra: list[str] | None = None):
    """The pedagle plugin manager, plus ``NAME=module:attr`` extras (a class is instantiated)."""
    from pedagle_core.registry import get_plugin_manager

    pm = get_plugin_manager()
    for spec in extra or []:
        name, _, target = spec.partition("=")
        if not target or ":" not in target:
            raise ValueError(f"--plugin {spec!r}: expected NAME=module:attr")
        mod, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(mod), attr)
        plugin = obj() if isinstance(obj, type) else obj
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        pm.register(plugin, name=name)
    return pm


def backend_info(pm, name: str) -> dict[str, Any]:
    obj = pm.get_plugin(name)
    if obj is None:
        known = sorted(n for n, _ in pm.list_name_plugin())
        return {"name": name, "registered": False, "available": False, "version": "", "capabilities": [],
                "reason": f"no backend named {name!r} is registered (pedagle.backends entry points: {known})"}
    fn = getattr(obj, "pedagle_backend_info", None)
    try:
        info = dict(fn()) if fn is not None else {"available": True, "reason": ""}
    except Exception as e:  # noqa: BLE001
        info = {"available": False, "reason": f"pedagle_backend_info failed: {type(e).__name__}: {e}"}
    info.setdefault("name", name)
    info.setdefault("version", "")
    info.setdefault("capabilities", [])
    info["registered"] = True
    return info


def _mode_supported(info: dict[str, Any], mode: str) -> bool:
    caps = set(info.get("capabilities") or [])
    if not caps & {"parallel", "autoregressive"}:
        return True                                   # the backend does not say: let it try
    return mode in caps


def _run_e2e_batch(pm, name: str, arg_list: list[dict[str, Any]]) -> list[Any]:
    """Results (or exceptions) of ``pedagle_run_case`` for each case dict, batched where possible."""
    obj = pm.get_plugin(name)
    batch = getattr(obj, "run_cases", None)
    if batch is None and type(obj).__module__.startswith("pedagle_backends.vllm"):
        from . import vllm_batch

        batch = vllm_batch.run_cases
    if batch is not None and arg_list:
        try:
            return list(batch(arg_list))
        except Exception as e:  # noqa: BLE001 - the whole batch failed: one error per case
            return [e] * len(arg_list)
    out = []
    for a in arg_list:
        try:
            r = pm.hook.pedagle_run_case(backend=name, case=a)
            out.append(r if r is not None else RuntimeError(f"backend {name!r} did not answer pedagle_run_case"))
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out


def _err(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 2000 else s[:2000] + " ..."


# ---------------------------------------------------------------------------------------------- e2e
@dataclass
class _Pending:
    outcome: Outcome
    case: Case
    expected: dict[str, Any]                 # what this run was compared with
    prompts: list[list[int]]
    request_ids: list[int]
    offsets: list[int]
    steps_left: list[int]
    desync: dict[int, int]


def _resync_jobs(p: _Pending) -> dict[str, Any] | None:
    prompts, rids, offs, left = [], [], [], []
    for r, s in sorted(p.desync.items()):
        if s < 0:
            continue
        remaining = p.steps_left[r] - s - 1
        if remaining <= 0:
            continue
        prompt, _ = resync_prompt(p.prompts[r], p.expected, r, s)
        prompts.append(prompt)
        rids.append(p.request_ids[r])
        offs.append(p.offsets[r] + s + 1)
        left.append(remaining)
    if not prompts:
        return None
    return {"prompts": prompts, "request_ids": rids, "offsets": offs, "steps_left": left}


def run_e2e(pm, name: str, cases: list[Case], device: str | None, tie_override: float | None, max_resync: int,
            log: Callable[[str], None]) -> list[Outcome]:
    info = backend_info(pm, name)
    outcomes: list[Outcome] = []
    todo: list[tuple[Case, Outcome]] = []
    for c in cases:
        o = Outcome(c.name, name, "e2e", "not run", tie=c.tie(tie_override))
        outcomes.append(o)
        if not info["available"]:
            o.reason = info["reason"] or "backend reports itself unavailable"
        elif c.expected is None:
            o.reason = "no expected result recorded (run: pedagle conformance record)"
        elif c.missing_models():
            o.reason = f"models missing: {', '.join(c.missing_models())}"
        elif c.stale_models():
            o.reason = f"stale: {', '.join(c.stale_models())} changed since recording (pedagle conformance record)"
        elif not _mode_supported(info, c.mode):
            o.reason = f"backend does not support mode {c.mode!r} (capabilities {info.get('capabilities')})"
        else:
            todo.append((c, o))
    if not todo:
        return outcomes
    log(f"[{name}] e2e: running {len(todo)} case(s)")
    t0 = time.perf_counter()
    results = _run_e2e_batch(pm, name, [c.run_args(device) for c, _ in todo])
    per = (time.perf_counter() - t0) / len(todo)
    pending: list[_Pending] = []
    for (c, o), res in zip(todo, results):
        o.seconds = per
        if isinstance(res, BaseException):
            o.status, o.reason = "error", _err(res)
            continue
        cmp = compare_e2e(c.expected, res, c.K, c.mode, o.tie)
        o.comparison = cmp
        if cmp.desync:
            pending.append(_Pending(o, c, c.expected, [list(p) for p in c.prompt_ids], list(range(c.batch_size)),
                                    [0] * c.batch_size, [c.steps] * c.batch_size, dict(cmp.desync)))
    for rnd in range(1, max_resync + 1):
        jobs = [(p, j) for p in pending if (j := _resync_jobs(p)) is not None]
        if not jobs:
            break
        log(f"[{name}] e2e: re-synchronising {sum(len(j['prompts']) for _, j in jobs)} request(s) in "
            f"{len(jobs)} case(s) (round {rnd})")
        args = [p.case.run_args(device, prompt_ids=j["prompts"], steps=max(j["steps_left"])) for p, j in jobs]
        refs = _run_e2e_batch(pm, "reference", args) if name != "reference" else None
        gots = _run_e2e_batch(pm, name, args)
        if refs is None:
            refs = gots
        nxt = []
        for (p, j), ref, got in zip(jobs, refs, gots):
            o = p.outcome
            o.resync_rounds = rnd
            o.comparison.drafts_uncompared -= sum(j["steps_left"]) * p.case.K
            bad = ref if isinstance(ref, BaseException) else got if isinstance(got, BaseException) else None
            if bad is not None:
                o.status, o.reason = "error", f"re-synchronised run (round {rnd}) failed: {_err(bad)}"
                continue
            cmp = compare_e2e(ref, got, p.case.K, p.case.mode, o.tie, steps_per_request=j["steps_left"],
                              round_=rnd, step_offsets=j["offsets"], request_ids=j["request_ids"])
            o.comparison.add(cmp)
            if cmp.desync:
                nxt.append(_Pending(o, p.case, ref, j["prompts"], j["request_ids"], j["offsets"], j["steps_left"],
                                    dict(cmp.desync)))
        pending = nxt
    for o in outcomes:
        o.finish()
    return outcomes


# ---------------------------------------------------------------------------------------------- step state
def _builtin_replay(name: str, obj: Any):
    """(replay function, reason if none) of the runner's own step-state adapters."""
    from pedagle_core.engine.backend import ReferenceBackend

    if isinstance(obj, ReferenceBackend) or name == "reference":
        from .stepstate import replay_reference

        return (lambda case, steps, mml: replay_reference(case, steps, mml)), ""
    mod = type(obj).__module__
    if name == "sglang" or mod.startswith("pedagle_backends.sglang"):
        from . import sglang_steps

        ok, reason = sglang_steps.available()
        return (sglang_steps.replay if ok else None), reason
    if name == "vllm" or mod.startswith("pedagle_backends.vllm"):
        return None, VLLM_STEP_STATE_REASON
    return None, "the backend offers no step-state replay (hook pedagle_replay_steps); end to end only"


def run_step_state(pm, name: str, cases: list[Case], device: str | None, tie_override: float | None,
                   log: Callable[[str], None]) -> list[Outcome]:
    from .stepstate import load_steps

    obj = pm.get_plugin(name)
    outcomes = []
    for c in cases:
        o = Outcome(c.name, name, "step-state", "not run", tie=c.tie(tie_override))
        outcomes.append(o)
        if obj is None:
            o.reason = backend_info(pm, name)["reason"]
            continue
        if c.expected is None or not c.step_state or not c.step_state_path.is_file():
            o.reason = "no recorded step state (run: pedagle conformance record)"
            continue
        if not (c.drafter_path / "config.json").is_file():
            o.reason = f"drafter missing: {c.drafter_path}"
            continue
        if c.stale_models(("drafter",)):
            o.reason = f"stale: {c.drafter_path} changed since recording (pedagle conformance record)"
            continue
        args = c.run_args(device)
        t0 = time.perf_counter()
        try:
            steps, meta = load_steps(c.step_state_path)
            mml = int(meta.get("max_model_len") or c.expected["max_model_len"])
            res = None
            hook = getattr(pm.hook, "pedagle_replay_steps", None)
            if hook is not None:
                res = hook(backend=name, case=args, steps=steps, max_model_len=mml)
            if res is None:
                fn, reason = _builtin_replay(name, obj)
                if fn is None:
                    o.reason = reason
                    continue
                res = fn(args, steps, mml)
        except NotImplementedError as e:
            o.reason = str(e)
            continue
        except Exception as e:  # noqa: BLE001
            o.status, o.reason, o.seconds = "error", _err(e), time.perf_counter() - t0
            continue
        o.seconds = time.perf_counter() - t0
        o.detail = res.get("level", "")
        cmp = compare_steps(c.expected, res, c.K, c.mode, o.tie)
        for prob in res.get("translation_problems") or []:
            cmp.mismatches.append(Mismatch("translation", prob["step"], None, None, "the recorded step input",
                                           f"fields {prob['fields']} differ", None, False,
                                           note="the backend's translation of the engine state differs"))
        o.comparison = cmp
        o.finish()
    if any(o.status != "not run" for o in outcomes):
        log(f"[{name}] step-state: {sum(o.status != 'not run' for o in outcomes)} case(s) replayed")
    return outcomes


# ---------------------------------------------------------------------------------------------- other venvs
def run_in_python(python: str, name: str, cases: list[Case], levels: list[str], device: str | None,
                  tie_margin: float | None, max_resync: int, log: Callable[[str], None],
                  timeout: float = 3600) -> tuple[list[Outcome], dict[str, Any]]:
    """Run backend ``name``'s cases in another interpreter (the backend's own virtual environment: vLLM and
    SGLang pin different torch builds), as ``PYTHON -m pedagle_conformance run --backends NAME --json``; the
    child compares with the recorded expectations and re-synchronises against its own reference backend.
    Returns its outcomes and its backend info. A child that fails to report gives one error outcome per case
    and level, with the child's last output lines."""
    import json
    import subprocess
    import tempfile

    log(f"[{name}] running in {python}")
    with tempfile.TemporaryDirectory(prefix=f"pedagle-conformance-{name}-") as tmp:
        out = os.path.join(tmp, "report.json")
        mode = "both" if len(levels) == 2 else levels[0]
        cmd = [python, "-m", "pedagle_conformance", "run", "--backends", name, "--mode", mode, "--json", out,
               "--max-resync", str(max_resync)]
        for c in cases:
            if c.path is None:
                raise ValueError(f"case {c.name}: no case file to hand to {python}")
            cmd += ["--cases", str(c.path)]
        if device:
            cmd += ["--device", device]
        if tie_margin is not None:
            cmd += ["--tie-margin", repr(tie_margin)]
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            tail = (proc.stdout[-1500:] + proc.stderr[-2500:]).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            proc, tail = None, _err(e)
        if proc is not None and os.path.isfile(out):
            rep = json.loads(open(out).read())
            log(f"[{name}] child finished in {time.perf_counter() - t0:.0f} s")
            return [Outcome.from_dict(d) for d in rep["outcomes"]], (rep.get("backends") or {}).get(name, {})
    reason = f"the run in {python} reported nothing (exit {None if proc is None else proc.returncode}): {tail}"
    return [Outcome(c.name, name, lv, "error", reason) for c in cases for lv in levels], \
        {"name": name, "available": False, "reason": reason}


# ---------------------------------------------------------------------------------------------- entry
def run_conformance(cases: list[Case], backends: list[str] | None = None, levels: list[str] | None = None,
                    device: str | None = None, tie_margin: float | None = None, max_resync: int = 2,
                    pm=None, plugins: list[str] | None = None, require_all: bool = False,
                    log: Callable[[str], None] = lambda s: None, pythons: dict[str, str] | None = None) -> Report:
    """``pythons``: backend name -> the interpreter (of its own virtual environment) that runs that backend's
    cases (`run_in_python`); every other backend runs in this process."""
    levels = levels or ["e2e"]
    pythons = dict(pythons or {})
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"level {lv!r}; expected one of {LEVELS}")
    pm = pm or plugin_manager(plugins)
    names = backends or sorted((n for n, _ in pm.list_name_plugin()), key=lambda n: (n != "reference", n))
    infos = {n: backend_info(pm, n) for n in names if n not in pythons}
    outcomes: list[Outcome] = []
    saved = os.environ.get("TRITON_INTERPRET")
    cpu = (device or "cpu") == "cpu" and all(c.device == "cpu" for c in cases)
    if cpu:
        os.environ["TRITON_INTERPRET"] = "0"        # the core's plain-torch paths on CPU, as when recorded
    try:
        for n in names:
            if n in pythons:
                got, infos[n] = run_in_python(pythons[n], n, cases, levels, device, tie_margin, max_resync, log)
                outcomes += got
                continue
            if "e2e" in levels:
                outcomes += run_e2e(pm, n, cases, device, tie_margin, max_resync, log)
            if "step-state" in levels:
                outcomes += run_step_state(pm, n, cases, device, tie_margin, log)
    finally:
        if cpu:
            if saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved
    order = {c.name: i for i, c in enumerate(cases)}
    outcomes.sort(key=lambda o: (order.get(o.case, 0), names.index(o.backend), LEVELS.index(o.level)))
    public = {n: {k: v for k, v in i.items() if k in ("name", "version", "available", "reason", "capabilities",
                                                         "registered")} for n, i in infos.items()}
    return Report(outcomes, public, [c.name for c in cases], levels, device, require_all)


__all__ = ["run_conformance", "run_in_python", "Outcome", "Report", "plugin_manager", "backend_info", "LEVELS",
           "VLLM_STEP_STATE_REASON"]
