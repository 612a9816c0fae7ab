"""The `longctx` command: a thin layer over longctx.api.

Human-readable text by default (`generate` prints the answer as it is decoded); `--json`
prints one JSON object. Bad input prints one line `longctx: error: ...` to stderr and exits
with status 2; Ctrl-C stops the workers and prints one line (status 130). `--help` of every
command shows the defaults.
"""

import argparse
import functools
import json
import sys

from longctx.answer_lines import answer_notes, summary_lines
from longctx.config import (DefaultsHelpFormatter, add_launcher_arguments, add_request_arguments,
                            add_run_arguments, add_video_arguments, config_from_args)
from longctx.errors import LongCtxError
from longctx.models.hub import resolve_model
from longctx.eval.tasks import TASKS
from longctx.models.tiny import tiny_families
from longctx.progress import PrefillProgress, shown
from longctx.options import declarations
from longctx.registry import method_names


def _add_generate(sub, argv):
    parser = sub.add_parser("generate", help="answer a question about a long document or a video")
    add_run_arguments(parser, argv=argv)
    add_request_arguments(parser)
    parser.add_argument("--chat", action="store_true",
                        help="render the prompt with the model's chat template: the document as the system "
                             "message, the question as the user's")
    add_launcher_arguments(parser, argv)
    parser.set_defaults(func=cmd_generate)


def _add_serve(sub, argv):
    parser = sub.add_parser("serve", help="an OpenAI-compatible server with a distributed document cache")
    add_run_arguments(parser, argv=argv)
    add_launcher_arguments(parser, argv)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    parser.add_argument("--max-queue", type=int, default=16,
                        help="requests that may wait for the workers; more are refused with 429")
    parser.add_argument("--cache-gib", type=float, default=None,
                        help="per-worker budget of cached document K/V (default: half of what each worker "
                             "has left after its weights; 0: no cache)")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer tokens when a request sets none")
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body accepted")
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: the "
                                                                    "model directory's name)")
    parser.set_defaults(func=cmd_serve)


def _add_compare(sub, argv):
    parser = sub.add_parser("compare", help="compare methods with dense on the same random input")
    add_run_arguments(parser, with_method=False, argv=argv)
    add_launcher_arguments(parser, argv)
    parser.add_argument("--methods", default="burst,ring,ulysses,allgather",
                        help=f"comma-separated methods to compare with dense ({', '.join(method_names())})")
    parser.add_argument("--length", type=int, default=1000, help="document tokens")
    parser.add_argument("--query-len", type=int, default=8, help="question tokens")
    parser.add_argument("--max-new-tokens", type=int, default=8,
                        help="greedy tokens compared (dense and the methods stop alike at the end token)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    video = add_video_arguments(parser, "compare on this video and --question instead of random token ids "
                                        "(a video-language model; --length is then the video's)")
    video.add_argument("--question", default="What happens in this video?", help="the question about --video")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip timing Hugging Face's SDPA forward of the same tokens (no speed-ups then)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=cmd_compare)


def _add_eval(sub, argv):
    parser = sub.add_parser("eval", help="accuracy of methods on RULER-style tasks, same samples for each")
    add_run_arguments(parser, with_method=False, argv=argv)
    add_launcher_arguments(parser, argv)
    parser.add_argument("--tasks", default="niah_single",
                        help=f"comma-separated tasks: {', '.join(TASKS)}; a variant with generator settings of "
                             "its own is a row too: 'variable_tracking[num-hops=2,num-chains=2]'")
    parser.add_argument("--methods", default="dense,burst",
                        help=f"comma-separated methods ({', '.join(method_names())}); dense runs on one worker; "
                             "a variant with options of its own is a column too: 'apb[compressor=random,passing-len=0]', "
                             "'spava[overlap=false]'")
    parser.add_argument("--length", type=int, default=4096, help="prompt tokens per sample")
    parser.add_argument("--samples", type=int, default=50, help="samples per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default: the longest expected answer + 1")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip timing Hugging Face's SDPA forward of every sample (accuracy only, "
                             "no speed-ups)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=cmd_eval)


def _add_tiny_model(sub, argv):
    parser = sub.add_parser("tiny-model", help="write a small random-weight model with a byte-level tokenizer")
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument("--family", default="llama", choices=tiny_families())
    parser.add_argument("--hidden", type=int, default=64, help="hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.set_defaults(func=cmd_tiny_model)


def _add_demo(sub, argv):
    parser = sub.add_parser("demo", help="run the shipped example end to end on local workers")
    parser.add_argument("--nproc", type=int, default=2, help="local workers")
    parser.add_argument("--model", default=None,
                        help="trained model directory (default: examples/models/needle-llama when present)")
    parser.add_argument("--method", default="apb", help="method for the trained-model demo")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed requests per method and HF SDPA forwards (the median is shown)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=cmd_demo)


def _add_plan(sub, argv):
    parser = sub.add_parser("plan", help="who holds which tokens, and the estimated time of every host",
                            description="Plan a run without workers: per-host token ranges, anchor and passing "
                                        "lengths and estimated time, for equal and balanced blocks side by side. "
                                        "--calibrate measures the cost coefficients on this device instead.")
    add_run_arguments(parser, model_required=False, defaults={"method": "apb", "nproc": 8, "balance": None},
                      argv=argv)
    parser.add_argument("--length", type=int, default=131072, help="document tokens")
    parser.add_argument("--query-len", type=int, default=32, help="question tokens")
    shape = parser.add_argument_group("model shape without --model (default: Llama-3.1-8B)")
    shape.add_argument("--layers", type=int, default=32)
    shape.add_argument("--hidden", type=int, default=4096)
    shape.add_argument("--heads", type=int, default=32)
    shape.add_argument("--kv-heads", type=int, default=8)
    shape.add_argument("--head-dim", type=int, default=128)
    shape.add_argument("--intermediate", type=int, default=14336, help="MLP width")
    parser.add_argument("--calibrate", action="store_true",
                        help="time the real kernels on this device for the model shape, save the coefficients "
                             "(to --costs FILE, else ~/.cache/longctx/costs.json, which every later plan without "
                             "--costs then uses) and print them")
    parser.add_argument("--calibrate-sizes", type=int, nargs="+", default=None, metavar="N",
                        help="token counts timed by --calibrate (default: 256 512 1024 on CPU, 2048 4096 8192 on CUDA)")
    parser.add_argument("--link-gb-per-s", type=float, default=None, help="--calibrate: link bandwidth to record")
    parser.add_argument("--message-us", type=float, default=None, help="--calibrate: per-message latency to record")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=cmd_plan)


def _add_methods(sub, argv):
    parser = sub.add_parser("methods", help="list the registered methods")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: each method's name, class, summary and options")
    parser.set_defaults(func=cmd_methods)


def build_parser(argv=None):
    """The full `longctx` argument parser (`argv`: the command line, read for plug-in methods' options)."""
    parser = argparse.ArgumentParser(prog="longctx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser,
                                                               formatter_class=DefaultsHelpFormatter))
    for add in (_add_generate, _add_serve, _add_compare, _add_eval, _add_tiny_model, _add_demo, _add_plan, _add_methods):
        add(sub, argv)
    return parser


def cmd_generate(args):
    """`longctx generate`: one answer, printed as it is decoded (or one JSON object), with timings.
    The request is checked in full before any worker starts (`longctx.request.Session`). A
    one-worker method (dense) runs on one worker whatever --nproc says, and says so."""
    from longctx.api import LongContextLM
    from longctx.request import Session, prompt_from_args

    config = config_from_args(args)
    prompt = prompt_from_args(args)
    session = Session(config, adapt_workers=True)
    if session.note:
        print(f"longctx: {session.note}", file=sys.stderr)
    if args.chat:
        from longctx.chat import encode_chat

        if prompt.video is not None:
            raise LongCtxError("--chat renders text prompts; a video prompt takes the model family's own layout")
        messages = [{"role": "system", "content": prompt.document}, {"role": "user", "content": prompt.question}]
        request = session.prepare_ids(*encode_chat(session.tokenizer, messages), args.max_new_tokens)
    else:
        request = session.prepare(prompt, args.max_new_tokens)
    progress = PrefillProgress(len(request.doc_ids), enabled=not args.json and shown(args.quiet))
    progress.starting(session.config.nproc)
    try:
        with LongContextLM.from_session(session) as lm:
            if args.json:
                payload = lm.generate_prepared(request).to_dict()
                payload["answer"] = payload.pop("text")
                print(json.dumps(payload))
                return
            stream = lm.stream_prepared(request, on_layer=progress.layer)
            started = False
            for piece in stream:
                if not started:  # the first token is decided: the answer begins
                    progress.close()
                    print("answer: ", end="", flush=True)
                    started = True
                print(piece, end="", flush=True)
            progress.close()
            print("" if started else "answer:")
    finally:
        progress.close()
    print("\n".join(summary_lines(stream.result, request.media)), flush=True)
    for note in answer_notes(stream.result, request, session.tokenizer, session.stop_ids):
        print(f"longctx: note: {note}", file=sys.stderr)


def cmd_serve(args):
    """`longctx serve`: the OpenAI-compatible server (`longctx.serve`) until SIGTERM or Ctrl-C."""
    try:
        from longctx.serve.server import serve
    except ImportError as exc:
        raise LongCtxError(f"longctx serve needs the serve extra (pip install -e .[serve]): {exc}") from None
    if args.max_queue < 1:
        raise LongCtxError(f"--max-queue must be at least 1 (got {args.max_queue})")
    serve(config_from_args(args), host=args.host, port=args.port, api_key=args.api_key, cache_gib=args.cache_gib,
          max_queue=args.max_queue, max_tokens=args.max_tokens, max_body_mb=args.max_body_mb,
          served_name=args.served_model_name)


def cmd_compare(args):
    """`longctx compare`: each method against dense, and its time against HF SDPA."""
    from longctx.compare import compare_methods
    from longctx.request import Prompt, check_question

    config = config_from_args(args)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not methods:
        raise LongCtxError("--methods is empty")
    video = None
    if args.video is not None:
        video = Prompt(question=check_question(args.question), video=args.video, num_frames=args.frames,
                       fps=args.fps, max_pixels=args.max_pixels, max_frames=args.max_frames)
    report = compare_methods(config, methods, args.length, args.query_len, args.max_new_tokens, args.seed,
                             baseline_repeats=0 if args.no_baseline else 3, video=video)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['length']} document tokens + {report['query_len']} question tokens on {config.nproc} workers; "
          f"dense tokens {report['reference']['tokens']}")
    print(f"{'method':<10} {'hidden rel err':>14} {'logits max err':>14} {'tokens':>7} {'prefill s':>9} "
          f"{'1st token s':>11} {'x HF':>6}")
    for row in report["results"]:
        ratio = "-" if row["speedup_vs_hf"] is None else f"{row['speedup_vs_hf']:.2f}"
        print(f"{row['method']:<10} {row['hidden_rel_err']:>14.2e} {row['logits_max_abs_err']:>14.2e} "
              f"{'same' if row['tokens_match'] else 'DIFF':>7} {row['prefill_s']:>9.3f} {row['ttft_s']:>11.3f} "
              f"{ratio:>6}")
    print("1st token s = prefill + query pass (the work of HF's one forward over the same tokens), one request "
          "per method\nafter one warm-up; prefill includes gathering the hidden states for the error check")
    hf = report["hf_sdpa"]
    if hf:
        print(f"HF SDPA: {hf['median_s']:.3f} s per forward (median of {len(hf['seconds'])}; one process, "
              f"{hf['threads']} threads, {hf['device']} {hf['dtype']}, before the workers started); "
              "x HF = that / 1st token s")
    else:
        print("HF SDPA baseline not measured (--no-baseline): no speed-ups")


def cmd_eval(args):
    """`longctx eval`: accuracy per task x method, mean time to first token per method and its
    speed-up against HF SDPA on the same samples."""
    from longctx.eval.harness import evaluate, format_report

    config = config_from_args(args)
    options = config.pool_options()
    report = evaluate(config.model, args.tasks, args.length, config.nproc, args.methods, args.samples,
                      args.seed, args.max_new_tokens, progress=not args.json and sys.stderr.isatty(),
                      baseline=not args.no_baseline, **options).to_dict()
    print(json.dumps(report) if args.json else format_report(report))


def cmd_tiny_model(args):
    """`longctx tiny-model`: write a random-weight model directory."""
    from longctx.models.tiny import make_tiny_model

    out = make_tiny_model(args.out_dir, args.family, args.hidden, args.layers, args.heads, args.kv_heads, args.seed)
    print(f"wrote a tiny random-weight {args.family} model to {out}")


def cmd_demo(args):
    """`longctx demo`: the shipped example."""
    from longctx.demo import run_demo

    if args.repeats < 1:
        raise LongCtxError(f"--repeats must be at least 1 (got {args.repeats})")
    report = run_demo(nproc=args.nproc, model=args.model and resolve_model(args.model), method=args.method,
                      repeats=args.repeats)
    print(json.dumps(report) if args.json else report["text"])


def cmd_plan(args):
    """`longctx plan`: equal and balanced plans with per-host estimates, or `--calibrate`."""
    from longctx.costs import dtype_bytes, resolve_device_type
    from longctx.plan_report import format_plan_report, plan_report, shape_from_args

    device = resolve_device_type(args.device)
    shape, model_config = shape_from_args(args, dtype_bytes(args.dtype, device))
    if args.calibrate:
        from longctx.request import check_machine

        check_machine(config_from_args(argparse.Namespace(**{**vars(args), "balance": "equal"})))
        _calibrate(args, device, shape)
        return
    if args.length < 1:
        raise LongCtxError(f"--length must be at least 1 (got {args.length})")
    config = config_from_args(argparse.Namespace(**{**vars(args), "balance": args.balance or "equal"}))
    balances = (args.balance,) if args.balance else ("equal", "auto")
    report = plan_report(config, model_config, args.length, args.query_len, balances)
    print(json.dumps(report) if args.json else format_plan_report(report))


def _calibrate(args, device, shape):
    import torch

    from longctx.calibrate import calibrate
    from longctx.costs import save_costs

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    say = None if args.json else (lambda text: print(f"timing {text} on {device} ...", file=sys.stderr))
    coeffs = calibrate(shape, device, dtype, args.calibrate_sizes, link_gb_per_s=args.link_gb_per_s,
                       message_us=args.message_us, progress=say, methods=[args.method])
    path = save_costs(coeffs, args.costs)
    kernels = None
    if device == "cuda":  # which attention kernel `auto` runs per shape class on this GPU
        from longctx.kernels.calibration import calibrate_and_save, format_entries

        kernels = calibrate_and_save(shape.heads, shape.kv_heads, shape.head_dim, dtype, say)
    if args.costs:
        used = f"plans use them when given --costs {path}"
    else:
        used = f"every later plan on {device} without --costs uses them instead of the shipped defaults"
    undo = f"delete {path} (or its {device!r} entry)"
    if args.json:
        print(json.dumps({"device": device, "saved": str(path), "used": used, "undo": undo,
                          "costs": coeffs.to_dict(), "kernels": kernels and {
                              "saved": str(kernels[0]), "device_name": kernels[1], "entries": kernels[2]}}))
        return
    print(f"saved {device} cost coefficients to {path}")
    print(f"  {used}; to undo, {undo}")
    for key, value in coeffs.to_dict().items():
        print(f"  {key:<20} {value}")
    if kernels:
        print(f"saved the attention kernel `auto` runs per call class on {kernels[1]} to {kernels[0]}:")
        print(format_entries(kernels[2]))


def cmd_methods(args):
    """`longctx methods`: the registered method names, one per line, or with --json one object
    {"methods": [{"name", "class", "summary" (its docstring's first line), "options" (flags)}]}."""
    from longctx.registry import method_class

    rows = []
    for name in method_names():
        cls = method_class(name)
        options = [] if cls.Options is None else [declared.flag for declared in declarations(cls.Options)]
        rows.append({"name": name, "class": f"{cls.__module__}:{cls.__qualname__}",
                     "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                     "options": options})
    if args.json:
        print(json.dumps({"methods": rows}))
        return
    print("\n".join(row["name"] for row in rows))


def main(argv=None):
    """Entry point of the `longctx` console script; returns the exit status."""
    try:
        args = build_parser(argv).parse_args(argv)
        args.func(args)
    except LongCtxError as exc:
        print(f"longctx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longctx: interrupted; every worker was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
