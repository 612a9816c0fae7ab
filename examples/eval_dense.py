"""Dense (single-process, plain Hugging Face) greedy accuracy on the RULER-style tasks.

    python examples/eval_dense.py --model examples/models/needle-llama \
        --tasks niah_single niah_multikey --length 4096 --samples 50 --seed 1234

Samples come from ``longctx.eval.make_samples`` measured with the model's tokenizer; the model
greedily continues ``sample.prompt`` and ``is_correct`` scores the continuation. No longctx
prefill is involved: this is the reference the distributed methods are compared against.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from longctx.eval import TASKS, is_correct, make_samples  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description="dense greedy accuracy on RULER-style tasks")
    p.add_argument("--model", default="examples/models/needle-llama")
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--length", type=int, nargs="+", default=[4096],
                   help="prompt length(s) in tokens")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--depth", type=float, default=None, help="needle depth 0..1 (default random)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="print every wrong answer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    results = []
    for length in args.length:
        for task in args.tasks:
            t0 = time.time()
            samples = make_samples(task, length, args.samples, seed=args.seed, tokenizer=tok,
                                   depth=args.depth)
            ok = 0
            for s in samples:
                ids = tok(s.prompt, return_tensors="pt")["input_ids"]
                max_new = len(tok(" " + s.answer, add_special_tokens=False)["input_ids"]) + 4
                with torch.no_grad():
                    out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                                         eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id)
                pred = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                good = is_correct(pred, s)
                ok += good
                if args.verbose and not good:
                    print(f"  wrong {task} #{s.index} depth {s.depth:.2f}: expected "
                          f"{s.answer!r} got {pred!r}")
            r = {"task": task, "length": length, "samples": len(samples),
                 "accuracy": ok / len(samples), "seconds": round(time.time() - t0, 1)}
            results.append(r)
            if not args.json:
                print(f"{task:16s} length {length:6d}  accuracy {r['accuracy']:.1%} "
                      f"({ok}/{len(samples)})  {r['seconds']}s", flush=True)
    if args.json:
        print(json.dumps({"model": args.model, "seed": args.seed, "results": results}))


if __name__ == "__main__":
    main()
