"""``pedagle conformance record|run|list`` (registered through ``add_parser``; also
``python -m pedagle_conformance ...``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cases(args):
    from .case import discover_cases

    return discover_cases(args.cases or None, args.case or None)


def _add_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", action="append", metavar="DIR",
                   help="case file or directory (repeatable; default: the bundled conformance/cases)")
    p.add_argument("--case", action="append", metavar="NAME",
                   help="only cases with this name or glob pattern (repeatable)")


def cmd_record(args) -> int:
    from .record import RecordError, record, verify

    cases = _cases(args)
    if not cases:
        print("no cases found", file=sys.stderr)
        return 2
    if args.verify:
        if args.check or args.dry_run:
            print("error: --verify writes nothing and records once; it cannot be combined with --check/--dry-run",
                  file=sys.stderr)
            return 2
        try:
            out = verify(cases, device=args.device)
        except RecordError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        bad = [s["case"] for s in out if s["status"] in ("differs", "not recorded")]
        print(f"{'FAIL' if bad else 'OK'}: {sum(s['status'] == 'matches' for s in out)} match the committed "
              f"recording, {len(bad)} differ or are not recorded, "
              f"{sum(s['status'] == 'skipped' for s in out)} skipped")
        return 1 if bad else 0
    try:
        record(cases, device=args.device, check=args.check, write=not args.dry_run)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from .report import format_markdown, format_text
    from .runner import run_conformance

    cases = _cases(args)
    if not cases:
        print("no cases found", file=sys.stderr)
        return 2
    levels = ["e2e", "step-state"] if args.mode == "both" else [args.mode]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    if args.backends is not None:
        from .runner import plugin_manager

        try:
            pm = plugin_manager(args.plugin)
        except (ValueError, ImportError, AttributeError) as e:
            print(f"pedagle conformance run: error: --plugin: {e}", file=sys.stderr)
            return 2
        known = sorted(n for n, _ in pm.list_name_plugin())
        unknown = [b for b in backends or [] if b not in known]
        if not backends or unknown:
            what = f"no backend named {', '.join(map(repr, unknown))}" if unknown else "no backend names given"
            print(f"pedagle conformance run: error: --backends {args.backends}: {what}; known backends: "
                  f"{', '.join(known)} (see `pedagle conformance list`; more with --plugin NAME=module:attr)",
                  file=sys.stderr)
            return 2
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quiet else (lambda s: None)
    pythons = {}
    for spec in args.python or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            print(f"error: --python {spec!r}: expected NAME=PATH (a backend name and the python of its venv)",
                  file=sys.stderr)
            return 2
        pythons[name.strip()] = path
    report = run_conformance(cases, backends=backends, levels=levels, device=args.device, tie_margin=args.tie_margin,
                             max_resync=args.max_resync, plugins=args.plugin, require_all=args.require_all, log=log,
                             pythons=pythons)
    print(format_text(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.report:
        Path(args.report).write_text(format_markdown(report))
    return report.exit_code


def cmd_list(args) -> int:
    from .runner import backend_info, plugin_manager

    pm = plugin_manager(args.plugin)
    print("backends:")
    for n, _ in sorted(pm.list_name_plugin()):
        i = backend_info(pm, n)
        print(f"  {n:<12} {i.get('version') or '-':<10} "
              + ("available" if i["available"] else f"not available: {i['reason']}"))
    print("cases:")
    for c in _cases(args):
        state = "recorded" if c.expected else "not recorded"
        if c.missing_models():
            state += ", models missing"
        print(f"  {c.name:<28} {c.mode:<15} K={c.K} steps={c.steps} B={c.batch_size} {c.dtype}  ({state})")
    return 0


EXIT_RECORD = """exit status:
  0  recorded (--verify: every case matches the committed recording)
  1  the reference could not record a case, or --check found two recordings differ, or --verify found a
     difference (or a case without a recording)
  2  usage error (no cases found, conflicting options)"""
EXIT_RUN = """exit status:
  0  nothing failed (identical or near-ties only; backends/cases that could not run are listed as not run)
  1  a case differs beyond a near-tie or a backend errored (--require-all: also when a requested
     backend/case could not run)
  2  usage error (an unknown backend name in --backends, a bad --plugin/--python, no cases found)"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("conformance", help="cross-backend conformance suite: record expected results, run "
                                                   "them on every backend",
                              description="Same drafter, same drafts, in every backend: cases recorded by the "
                                          "reference backend, compared step by step on each backend.")
    sub = p.add_subparsers(dest="conformance_command", metavar="{record,run,list}")
    from pedagle_core.helpformat import HelpFormatter as raw
    r = sub.add_parser("record", help="record the expected results of the cases with the reference backend",
                       formatter_class=raw, epilog=EXIT_RECORD,
                       description="Run every case on pedagle's reference backend (greedy, EOS ignored) and write "
                                   "its expected result into the case JSON (drafts, accepted counts, emitted ids, "
                                   "top-2 margins, model fingerprints) plus the step inputs beside it "
                                   "(<case>.steps.safetensors). --verify instead checks that this environment "
                                   "reproduces the committed recordings (ids exactly, margins within a relative "
                                   "tolerance, versions only reported; conformance/README.md).")
    _add_case_args(r)
    r.add_argument("--device", default=None, help="override the cases' device (default: each case's, cpu)")
    r.add_argument("--check", action="store_true", help="record twice and fail unless identical (reproducibility)")
    r.add_argument("--dry-run", action="store_true", help="record without writing anything")
    r.add_argument("--verify", action="store_true",
                   help="write nothing; re-record and compare with the committed recording: ids exactly, margins "
                        "within a relative tolerance (conformance/README.md), versions reported only")
    r.set_defaults(func=cmd_record)

    u = sub.add_parser("run", help="run the cases on backends and compare step by step", formatter_class=raw,
                       epilog=EXIT_RUN,
                       description="Run the recorded cases on each backend (reference, vllm, sglang or any "
                                   "pedagle.backends entry point) and compare every drafting step with the "
                                   "recording: drafts per position, accepted counts, emitted tokens. A differing "
                                   "draft whose recorded margin is below the tie margin is a near-tie (listed, "
                                   "not a failure); a backend or case that cannot run here is listed as not run, "
                                   "never as a pass.")
    _add_case_args(u)
    u.add_argument("--backends", default=None,
                   help="comma-separated backend names (default: every registered backend)")
    u.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the cases' device")
    u.add_argument("--mode", choices=["e2e", "step-state", "both"], default="e2e",
                   help="e2e: whole engine per case; step-state: recorded step inputs into the drafting path")
    u.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    u.add_argument("--report", metavar="REPORT.md", help="write a short markdown report")
    u.add_argument("--tie-margin", type=float, default=None,
                   help="near-tie margin for every case (default: the case's, else by dtype: fp32 1e-4, fp16 1e-2, "
                        "bf16 0.1)")
    u.add_argument("--max-resync", type=int, default=2,
                   help="re-synchronisation rounds after a desynchronising mismatch (default 2; 0 = off)")
    u.add_argument("--require-all", action="store_true",
                   help="exit non-zero when a requested backend/case could not run")
    u.add_argument("--plugin", action="append", metavar="NAME=module:attr",
                   help="register an extra backend object or class (e.g. a backend under development)")
    u.add_argument("--python", action="append", metavar="NAME=PATH",
                   help="run backend NAME's cases with this interpreter (its own virtual environment), e.g. "
                        "--python vllm=~/venvs/vllm/bin/python --python sglang=~/venvs/sglang/bin/python")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    u.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list the cases and the registered backends", formatter_class=raw,
                        epilog="exit status: 0 listed; 2 usage error (e.g. an unreadable case file)",
                        description="List the registered backends (installed or not, with the reason) and the "
                                    "cases (mode, K, steps, batch, dtype, recorded or not, models present or not).")
    _add_case_args(ls)
    ls.add_argument("--plugin", action="append", metavar="NAME=module:attr",
                    help="register an extra backend object or class before listing")
    ls.set_defaults(func=cmd_list)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pedagle")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["conformance", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


__all__ = ["add_parser", "main"]
