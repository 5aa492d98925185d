"""``pedagle inspect DIR [--json]`` and ``pedagle convert SRC DST --to vllm|speculators [--verifier NAME]``."""

from __future__ import annotations

from ..helpformat import HelpFormatter  # noqa: E402  (stdlib only)

import argparse
import json
import sys
import warnings

from .errors import CheckpointError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


EXIT_STATUS_INSPECT = """exit status:
  0  the checkpoint loads (warnings, if any, are printed)
  1  it has an error generate/serving would refuse (listed), or cannot be read at all"""
EXIT_STATUS_CONVERT = """exit status:
  0  written
  1  the source checkpoint has an error (one line names it)
  2  usage error"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show a drafter checkpoint: format, config, tensors, problems",
                              description="Show a drafter checkpoint (vLLM or speculators format) and every problem "
                                          "a load would meet: structure (missing tensors, shapes, dtypes, config "
                                          "fields) and values (non-finite weights, d2t outside the target "
                                          "vocabulary; reads every tensor, skipped by --headers-only).",
                              epilog=EXIT_STATUS_INSPECT, formatter_class=HelpFormatter)
    p.add_argument("path", metavar="DIR", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--headers-only", action="store_true",
                   help="read only config.json and the safetensors headers: no value checks (the report says so)")
    p.set_defaults(func=run_inspect)

    c = subparsers.add_parser("convert", help="rewrite a drafter checkpoint in another format (drafts unchanged)",
                              description="Rewrite a drafter checkpoint, tensor for tensor, in the vLLM "
                                          "(canonical) or the speculators format.",
                              epilog=EXIT_STATUS_CONVERT, formatter_class=HelpFormatter)
    c.add_argument("src", metavar="SRC", help="source checkpoint directory")
    c.add_argument("dst", metavar="DST", help="destination directory (created)")
    c.add_argument("--to", required=True, choices=("vllm", "speculators"), help="destination format")
    c.add_argument("--verifier", default=None, metavar="NAME",
                   help="target model name or path (speculators_config.verifier.name_or_path)")
    c.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="cast the floating-point weights")
    c.set_defaults(func=run_convert)


def _fmt_shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def render(info: dict) -> str:
    cfg = info["config"]
    lines = [
        f"checkpoint   {info['path']}",
        f"format       {info['format']}",
        f"architecture {cfg['architecture']}  layers={cfg['num_hidden_layers']}  hidden={cfg['hidden_size']}  "
        f"heads={cfg['num_attention_heads']}/{cfg['num_key_value_heads']}  head_dim={cfg['head_dim']}  "
        f"intermediate={cfg['intermediate_size']}",
        f"vocab        target={cfg['vocab_size']}  draft={cfg['draft_vocab_size']}",
        f"aux states   n={cfg['num_aux_hidden_states']}  target_hidden={cfg['target_hidden_size']}  "
        f"layer_ids={cfg['aux_layer_ids']}",
        f"mask token   {info['mask_token']['id']} (from {info['mask_token']['source']})",
        f"depth        {cfg['parallel_depth']}" + ("" if info["parallel_depth_recorded"] else " (not recorded)"),
        f"modes        {', '.join(info['modes'])}",
        f"norms        before_residual={cfg['norm_before_residual']} before_fc={cfg['norm_before_fc']} "
        f"fc_norm={cfg['fc_norm']} norm_output={cfg['norm_output']}",
        f"rope         {cfg['rope_parameters']}",
        f"shared       missing: {', '.join(info['missing_shared_weights']) or 'none'}"
        + ("  (pass a target when loading)" if info["missing_shared_weights"] else ""),
    ]
    if info["verifier"]["name_or_path"]:
        lines.append(f"verifier     {info['verifier']['name_or_path']}")
    lines.append(f"parameters   {info['num_parameters']:,}")
    if "vllm_speculative_config" in info:
        spec = json.dumps(info["vllm_speculative_config"]).replace("null", "<K>")
        lines.append(f"vLLM         --speculative-config '{spec}'")
    lines.append("")
    rows = [(t["name"], _fmt_shape(t["shape"]), t["dtype"], t["file"]) for t in info["tensors"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("tensor", "shape", "dtype", "file"))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(("tensor", "shape", "dtype", "file"), widths)))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    lines.append("values       " + ("checked: every tensor read (finite weights, d2t in range)" if info.get("values_checked")
                                   else "NOT checked (--headers-only): generate may still refuse non-finite weights "
                                        "or an out-of-range d2t"))
    if info["ignored_tensors"]:
        lines.append(f"ignored: {', '.join(info['ignored_tensors'])}")
    for p in info["problems"]:
        lines.append(f"{p['level']}: {p['message']}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from .load import describe, value_problems

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = describe(args.path)
            info["values_checked"] = not args.headers_only
            if not args.headers_only:
                info["problems"] += [{"level": p.level, "message": p.message} for p in value_problems(args.path)]
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in caught:
        info["problems"].append({"level": "warning", "message": str(w.message)})
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 1 if any(p["level"] == "error" for p in info["problems"]) else 0


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from .load import convert

    try:
        dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
        convert(args.src, args.dst, to=args.to, verifier_name_or_path=args.verifier, dtype=dtype)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({args.to} format)")
    return 0
