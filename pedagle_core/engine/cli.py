"""``pedagle generate`` and ``pedagle bench``: the reference engine from the command line.

    pedagle generate --target DIR --drafter DIR --mode parallel -k 5 --prompt "def add(a, b):" \\
        --max-new-tokens 64 [--temperature 0.7 --top-p 0.9 --seed 1] [--json]
    pedagle bench --target DIR --drafter DIR [--ar-drafter DIR] --prompts FILE.jsonl -k 1,3,5,7 \\
        --modes parallel,autoregressive,none --out results.json [--plot plot.png]

Prompts files are JSON lines: {"prompt": "text"} (needs the target's tokenizer) or {"prompt_ids": [1, 2]};
a line holding a bare JSON string or list of ints works too.
"""

from __future__ import annotations

from ..helpformat import HelpFormatter  # noqa: E402  (stdlib only)

import argparse
import datetime
import json
import os
import platform
import sys
import warnings
from typing import Any

import torch

from ..provenance import code_commit

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "float64")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


EXIT_CODES = """exit status:
  0  success
  1  an unexpected internal error (a bug: please report it with the traceback)
  2  usage error: a bad argument, input file or checkpoint (one line on stderr names it)"""

SEED_MAX = 2**63 - 1

GENERATE_JSON_DOC = """--json prints one JSON object:
  {"mode": "parallel", "K": 5,               (K is 0 for --mode none)
   "outputs": [                               one entry per prompt, in input order
     {"prompt_ids": [...], "output_ids": [...],
      "finish_reason": "length" | "stop",     per output: "stop" = the target's EOS token, "length" =
                                              --max-new-tokens (or --max-model-len) reached
      "text": "..."}],                        (only when the target directory has a tokenizer)
   "metrics": {...},                          the whole run: tokens, steps, acceptance, timings
   "device": "..."}"""


def _int_at_least(lo: int, what: str = "an integer", hi: int | None = None, hint: str = ""):
    """An argparse type: an int in [lo, hi] (argparse turns the error into a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if hi is not None and not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v}: expected {what} in [{lo}, {hint or hi}]")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v}: expected {what} >= {lo}")
        return v
    parse.__name__ = f"int>={lo}" if hi is None else f"int in [{lo}, {hi}]"
    return parse


def _finite_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text}: expected a finite number")
    return v


# ------------------------------------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, metavar="DIR", help="target model: a local Hugging Face causal-LM directory")
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=64, metavar="N",
                   help="tokens to generate per prompt, >= 1 [64]")
    p.add_argument("--temperature", type=_finite_float, default=0.0, metavar="T",
                   help="0 = greedy (lossless); > 0 samples (finite) [0]")
    p.add_argument("--top-p", type=_finite_float, default=1.0, metavar="P", help="nucleus sampling, in (0, 1] [1.0 = off]")
    p.add_argument("--top-k", type=_int_at_least(0), default=0, metavar="K", help="top-k sampling [0 = off]")
    p.add_argument("--seed", type=_int_at_least(0, "an integer", SEED_MAX, "2**63 - 1 (request i uses seed + i)"),
                   default=0, help="request i samples with seed + i; 0 .. 2**63-1 [0]")
    p.add_argument("--batch-size", type=_int_at_least(1), default=8, metavar="N", help="requests verified together [8]")
    p.add_argument("--max-model-len", type=_int_at_least(1), default=None, metavar="N",
                   help="prompt + output limit per request [prompt + max-new-tokens + 1]")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N [cuda if available]")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="target and drafter dtype [auto: the checkpoints' own]")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the target's EOS token")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("generate", help="speculative decoding with the reference engine",
                              description="Generate with a target and a P-EAGLE / EAGLE-3 drafter (greedy output "
                                          "is the target's own, see the README on bf16 near-ties; sampling keeps "
                                          "the target's distribution).",
                              epilog=GENERATE_JSON_DOC + "\n\n" + EXIT_CODES,
                              formatter_class=HelpFormatter)
    _common(g)
    g.add_argument("--drafter", metavar="DIR", help="drafter checkpoint (vLLM or speculators format)")
    g.add_argument("--mode", default="parallel", choices=("parallel", "autoregressive", "none"),
                   help="parallel (P-EAGLE, one drafter forward), autoregressive (EAGLE-3, K forwards), "
                        "none (target only) [parallel]")
    g.add_argument("-k", "--num-draft-tokens", dest="k", type=_int_at_least(1), default=5, metavar="K",
                   help="drafts per step [5]")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (tokenized with the target's tokenizer)")
    src.add_argument("--prompt-ids", metavar="IDS", help="comma-separated prompt token ids")
    src.add_argument("--prompts", metavar="FILE", help="JSON-lines file of prompts")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object instead of text: per prompt its ids, output and finish_reason, plus "
                        "the run's metrics (layout below)")
    g.add_argument("--progress", action="store_true", help="show a progress bar (stderr)")
    g.add_argument("--batch-invariant", action="store_true",
                   help="target attention one row at a time, so a row's logits do not depend on the other rows of "
                        "a forward: bf16 greedy output then equals --mode none token for token (on CPU; slower, "
                        "see bench/README.md)")
    g.set_defaults(func=run_generate)

    b = subparsers.add_parser("bench", help="sweep K and drafting modes; table, JSON and plot",
                              description="Benchmark the reference engine over K values and modes in one process.",
                              epilog=EXIT_CODES, formatter_class=HelpFormatter)
    _common(b)
    b.add_argument("--drafter", required=True, metavar="DIR", help="P-EAGLE drafter checkpoint")
    b.add_argument("--ar-drafter", metavar="DIR", help="drafter for mode autoregressive (an EAGLE-3 head) [--drafter]")
    b.add_argument("--prompts", required=True, metavar="FILE", help="JSON-lines file of prompts")
    b.add_argument("--num-prompts", type=_int_at_least(1), default=None, metavar="N", help="use the first N prompts [all]")
    b.add_argument("-k", "--num-draft-tokens", dest="k", default="1,3,5,7", metavar="K,K,..", help="K values [1,3,5,7]")
    b.add_argument("--modes", default="parallel,autoregressive,none", help="modes to run [parallel,autoregressive,none]")
    b.add_argument("--warmup", type=_int_at_least(0), default=1, metavar="N",
                   help="untimed warm-up passes per configuration (on CUDA: one per batch size, capturing the "
                        "decode-step graphs) [1]")
    b.add_argument("--out", required=True, metavar="FILE", help="results JSON")
    b.add_argument("--plot", metavar="FILE",
                   help="PNG: acceptance length and tokens/s vs K, titled with the device, batch size, number of "
                        "prompts and K range")
    b.set_defaults(func=run_bench)


# ------------------------------------------------------------------------------------------- loading
def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name}: not a device; expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _tokenizer(target_dir: str):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target_dir)
    except Exception:  # noqa: BLE001 - no / unreadable tokenizer
        return None


def _ids(text: str, what: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise CLIError(f"{what}: expected comma-separated integers, got {text!r}") from e
    if not ids:
        raise CLIError(f"{what}: no token ids")
    if any(i < 0 for i in ids):
        raise CLIError(f"{what}: {text!r} has negative values; expected non-negative integers")
    return ids


def _brief(x, n: int = 60) -> str:
    t = json.dumps(x) if not isinstance(x, str) else repr(x)
    return t if len(t) <= n else t[: n - 3] + "..."


def read_prompts(path: str, tokenizer) -> list[tuple[str | None, list[int]]]:
    """[(text or None, ids)] from a JSON-lines prompts file."""
    if not os.path.isfile(path):
        raise CLIError(f"--prompts {path}: file not found")
    out = []
    try:
        with open(path, "rb") as fh:
            raw_lines = fh.read().split(b"\n")
    except OSError as e:
        raise CLIError(f"--prompts {path}: cannot read ({e.strerror})") from e
    for n, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CLIError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                           "expected a UTF-8 JSON-lines file") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise CLIError(f"{path}:{n}: not JSON ({e})") from e
        if isinstance(rec, dict):
            ids = rec.get("prompt_ids", rec.get("ids"))
            text = rec.get("prompt", rec.get("text"))
        elif isinstance(rec, list):
            ids, text = rec, None
        else:
            ids, text = None, rec
        if ids is not None:
            if not isinstance(ids, list) or not ids or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise CLIError(f"{path}:{n}: 'prompt_ids' = {_brief(ids)}; expected a non-empty list of "
                               "non-negative integer token ids")
            out.append((text if isinstance(text, str) else None, ids))
        elif isinstance(text, str):
            out.append((text, _encode(tokenizer, text, f"{path}:{n}")))
        else:
            raise CLIError(f"{path}:{n}: expected {{\"prompt\": str}} or {{\"prompt_ids\": [int, ...]}}")
    if not out:
        raise CLIError(f"--prompts {path}: no prompts")
    return out


def _encode(tokenizer, text: str, what: str) -> list[int]:
    if tokenizer is None:
        raise CLIError(f"{what}: a text prompt needs a tokenizer in the target directory; pass token ids instead "
                       "(--prompt-ids / \"prompt_ids\")")
    return list(tokenizer(text)["input_ids"])


def load_models(args: argparse.Namespace, drafter_dirs: dict[str, str | None]):
    """(hf target, {mode: TargetModel, Drafter | None}, tokenizer, device)."""
    from ..formats import CheckpointError
    from .backend import load_drafter_for
    from .target import EngineError, TargetModel, load_hf_target, resolve_dtype

    device = _device(args.device)
    dt = resolve_dtype(args.dtype)
    hf = load_hf_target(args.target, dtype=dt, device=device)
    out = {}
    cache: dict[str, Any] = {}
    for mode, path in drafter_dirs.items():
        if mode == "none" or path is None:
            out[mode] = (TargetModel(hf), None)
            continue
        key = f"{path}|{mode == 'parallel'}"
        if key not in cache:
            try:
                d = load_drafter_for(path, hf, mode, dt, device)
            except CheckpointError as e:
                raise CLIError(str(e)) from e
            try:
                wrapped = TargetModel(hf, aux_layer_ids=d.config.aux_layer_ids)
            except EngineError as e:
                raise CLIError(_aux_ids_message(path, args.target, e)) from e
            cache[key] = (wrapped, d)
        out[mode] = cache[key]
    return hf, out, _tokenizer(args.target), device


def _aux_ids_message(drafter_dir: str, target_dir: str, err: Exception) -> str:
    """The target rejected the drafter's aux layer ids: name the drafter's config key and file."""
    from ..formats.load import aux_layer_ids_field

    cfg_file, key = aux_layer_ids_field(drafter_dir)
    detail = str(err).split(": ", 1)[-1] if str(err).startswith("aux_layer_ids") else str(err)
    if key is None:
        return f"--drafter {drafter_dir} does not fit --target {target_dir}: {err}"
    return (f"{cfg_file}: field '{key}' does not fit --target {target_dir}: {detail}; expected ids of the target's "
            "decoder layers (a drafter trained for this target)")


def _sampling(args: argparse.Namespace):
    from .verify import SamplingParams

    try:
        return SamplingParams(args.temperature, args.top_p, args.top_k)
    except ValueError as e:
        raise CLIError(str(e)) from e


def _user_errors():
    from ..config import ConfigError
    from ..draft import DraftError
    from ..formats import CheckpointError
    from .target import EngineError

    return (CLIError, EngineError, CheckpointError, DraftError, ConfigError)


def _fail(cmd: str, e: Exception) -> int:
    print(f"pedagle {cmd}: error: {e}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------- generate
def run_generate(args: argparse.Namespace) -> int:
    try:
        return _generate(args)
    except _user_errors() as e:
        return _fail("generate", e)


def _generate(args: argparse.Namespace) -> int:
    from .engine import SpecEngine

    if args.mode != "none" and not args.drafter:
        raise CLIError(f"--mode {args.mode} needs --drafter DIR (or use --mode none)")
    sampling = _sampling(args)
    hf, models, tok, device = load_models(args, {args.mode: args.drafter if args.mode != "none" else None})
    target, drafter = models[args.mode]
    target.batch_invariant = args.batch_invariant
    if args.prompt is not None:
        prompts = [(args.prompt, _encode(tok, args.prompt, "--prompt"))]
    elif args.prompt_ids is not None:
        prompts = [(None, _ids(args.prompt_ids, "--prompt-ids"))]
    else:
        prompts = read_prompts(args.prompts, tok)
    engine = SpecEngine(target, drafter, mode=args.mode, K=args.k, max_batch=args.batch_size,
                        max_model_len=args.max_model_len)
    stream = not args.json and (len(prompts) == 1 or args.batch_size == 1)
    printer = _Streamer(tok, [p[1] for p in prompts]) if stream else None
    res = engine.generate([p[1] for p in prompts], max_new_tokens=args.max_new_tokens, sampling=sampling,
                          seed=args.seed, eos_token_ids=() if args.ignore_eos else None,
                          on_tokens=printer, progress=args.progress)
    m = res.metrics
    if args.json:
        outs = []
        for (text, ids), out, why in zip(prompts, res.output_ids, res.finish_reasons):
            rec = {"prompt_ids": ids, "output_ids": out, "finish_reason": why}
            if tok is not None:
                rec["text"] = tok.decode(out)
            outs.append(rec)
        print(json.dumps({"mode": args.mode, "K": args.k if args.mode != "none" else 0, "outputs": outs,
                          "metrics": m.to_dict(), "device": _device_name(device)}))
        return 0
    if printer is not None:
        printer.finish()
    else:
        for i, ((text, ids), out) in enumerate(zip(prompts, res.output_ids)):
            body = tok.decode(out) if tok is not None else " ".join(map(str, out))
            print(f"--- prompt {i} ---\n{body}")
    print(_summary(m, args.mode), file=sys.stderr)
    return 0


class _Streamer:
    """Prints each request's text as it grows (requests arrive one after the other when streaming)."""

    def __init__(self, tok, prompts: list[list[int]]) -> None:
        self.tok, self.prompts = tok, prompts
        self.current: int | None = None
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, idx: int, new: list[int]) -> None:
        if idx != self.current:
            self.finish()
            self.current, self.ids, self.shown = idx, [], ""
            if len(self.prompts) > 1:
                print(f"--- prompt {idx} ---", flush=True)
        self.ids += new
        if self.tok is None:
            sys.stdout.write(" ".join(map(str, new)) + " ")
        else:
            text = self.tok.decode(self.ids)
            if text.startswith(self.shown):
                sys.stdout.write(text[len(self.shown):])
            self.shown = text
        sys.stdout.flush()

    def finish(self) -> None:
        if self.current is not None:
            print(flush=True)
            self.current = None


def _summary(m, mode: str) -> str:
    s = (f"[{mode}] {m.num_output_tokens} tokens in {m.total_time_s:.2f} s ({m.tokens_per_s:.1f} tok/s), "
         f"{m.steps} steps")
    if m.num_drafts:
        rates = ", ".join(f"{r:.2f}" for r in m.acceptance_rate_per_position)
        s += (f"; mean acceptance length {m.mean_acceptance_length:.2f} ({m.num_accepted_tokens}/"
              f"{m.num_draft_tokens} drafts accepted; per position {rates}); draft time {100 * m.draft_fraction:.0f}%")
    return s


# ------------------------------------------------------------------------------------------- bench
def run_bench(args: argparse.Namespace) -> int:
    try:
        return _bench(args)
    except _user_errors() as e:
        return _fail("bench", e)


def _bench(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .engine import MODES, SpecEngine

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise CLIError(f"--modes {args.modes}: expected a comma-separated subset of {','.join(MODES)}")
    ks = sorted(set(_ids(args.k, "-k")))
    if ks[0] < 1:
        raise CLIError(f"-k {args.k}: K values must be >= 1")
    sampling = _sampling(args)
    dirs = {m: (None if m == "none" else args.ar_drafter or args.drafter if m == "autoregressive" else args.drafter)
            for m in modes}
    hf, models, tok, device = load_models(args, dirs)
    prompts = [p[1] for p in read_prompts(args.prompts, tok)]
    if args.num_prompts:
        prompts = prompts[: args.num_prompts]
    eos = () if args.ignore_eos else None
    mml = args.max_model_len or max(len(p) for p in prompts) + args.max_new_tokens + 1   # fixed: graphs stay valid
    configs = [(m, k) for m in modes for k in (ks if m != "none" else [0])]
    runs = []
    for mode, k in tqdm(configs, desc="bench", unit="run", file=sys.stderr):
        target, drafter = models[mode]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # K beyond the trained depth is the point of a sweep
            engine = SpecEngine(target, drafter, mode=mode, K=max(k, 1), max_batch=args.batch_size,
                                max_model_len=mml)
        if args.warmup:
            _warm_up(engine, prompts, args, sampling, eos)
        res = engine.generate(prompts, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed,
                              eos_token_ids=eos)
        runs.append({"mode": mode, **res.metrics.to_dict(), "K": k})
    base = next((r["tokens_per_s"] for r in runs if r["mode"] == "none"), None)
    for r in runs:
        r["speedup_vs_none"] = r["tokens_per_s"] / base if base else None
    result = {"meta": _meta(args, device, len(prompts)), "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(format_table(runs))
    print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot_results(runs, args.plot, title=plot_title(result["meta"], ks))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _warm_up(engine, prompts: list[list[int]], args: argparse.Namespace, sampling, eos) -> None:
    """Untimed short runs: first-call costs (kernel compilation for the real prompts' shapes), and on
    CUDA the capture of the decode-step graphs of every batch size a timed run can meet (1 .. batch
    size), so no compilation or capture lands inside a timing."""
    n = min(args.max_new_tokens, 2 * engine.K + 4)             # prefill + a few static decode steps
    sizes = range(1, min(args.batch_size, len(prompts)) + 1) if engine.cuda_graphs else []
    for _ in range(args.warmup):
        engine.generate(prompts[: args.batch_size], max_new_tokens=n, sampling=sampling, seed=args.seed,
                        eos_token_ids=eos)
        for b in sizes:
            engine.generate([prompts[0]] * b, max_new_tokens=n, sampling=sampling, seed=args.seed, eos_token_ids=eos)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _meta(args: argparse.Namespace, device: torch.device, n_prompts: int) -> dict[str, Any]:
    import transformers

    from .. import __version__

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": _device_name(device), "commit": code_commit(), "pedagle": __version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "target": args.target, "drafter": args.drafter, "ar_drafter": args.ar_drafter or args.drafter,
            "prompts": args.prompts, "num_prompts": n_prompts, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed,
            "batch_size": args.batch_size, "dtype": args.dtype, "ignore_eos": args.ignore_eos}


def format_table(runs: list[dict]) -> str:
    head = f"{'mode':<15}{'K':>3}{'accept len':>12}{'tok/s':>10}{'speedup':>9}{'draft %':>9}  acceptance per position"
    lines = [head, "-" * len(head)]
    for r in runs:
        sp = f"{r['speedup_vs_none']:.2f}x" if r.get("speedup_vs_none") else "-"
        rates = " ".join(f"{x:.2f}" for x in r["acceptance_rate_per_position"])
        lines.append(f"{r['mode']:<15}{r['K']:>3}{r['mean_acceptance_length']:>12.2f}{r['tokens_per_s']:>10.1f}"
                     f"{sp:>9}{100 * r['draft_fraction']:>8.0f}%  {rates}")
    return "\n".join(lines)


def plot_title(meta: dict[str, Any], ks: list[int]) -> str:
    """What a reader of the plot needs: where it ran, on how much, over which K."""
    k_range = f"K {ks[0]}..{ks[-1]}" if len(ks) > 1 else f"K {ks[0]}"
    return (f"{meta['device']}, batch size {meta['batch_size']}, {meta['num_prompts']} prompts x "
            f"{meta['max_new_tokens']} tokens, {k_range}, {meta['dtype']}")


def plot_results(runs: list[dict], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["K"])
        if mode == "none":
            for ax, key in ((ax1, "mean_acceptance_length"), (ax2, "tokens_per_s")):
                ax.axhline(rs[0][key], linestyle="--", color="gray", label="none (target only)")
            continue
        ks = [r["K"] for r in rs]
        ax1.plot(ks, [r["mean_acceptance_length"] for r in rs], marker="o", label=mode)
        ax2.plot(ks, [r["tokens_per_s"] for r in rs], marker="o", label=mode)
    ax1.set(xlabel="K (drafts per step)", ylabel="mean acceptance length", title="acceptance length")
    ax2.set(xlabel="K (drafts per step)", ylabel="tokens / s", title="throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
