"""APB's ablation (Huang et al., Table 4) on our model: which of APB's parts an answer needs.

    python benchmarks/apb_ablation.py --out /tmp/apb_ablation.json
    python benchmarks/apb_ablation.py --smoke --out /tmp/apb_ablation.json     # 2 samples at 1,024 tokens

Each length is one `longctx.eval.harness.evaluate` call, i.e. one `longctx eval` command (the
JSON records it per length) whose columns are method variants, so every row answers the very
same samples (no HF baseline), on --hosts workers, with equal contiguous blocks for every row
(`--balance equal`: the published layout, so rows differ only in what they ablate):

    dense                   one worker, the reference
    apb (query)             the query-aware compressor (default)
    apb (retaining-heads)   learned heads (--retaining-heads FILE, `python -m apb.train_heads`)
    apb (random)            random passing blocks
    apb (no passing)        --passing-len 0
    star                    StarAttention: an anchor of document tokens only, nothing passed
    apb (no anchor)         --anchor-len 0
    burst                   exact (BurstAttention)

The committed run (README, "When passing matters") is

    python -c "from longctx.eval import make_samples; from transformers import AutoTokenizer as A; \
t = A.from_pretrained('examples/models/vt-llama'); open('/tmp/vt_heads_corpus.txt', 'w').write(''.join( \
s.prompt + ' ' + s.answer + chr(10) for task, kw in (('niah_single', {}), ('niah_multikey', {}), \
('variable_tracking', {'num_hops': 1})) for s in make_samples(task, 2048, 6, seed=77, tokenizer=t, **kw)))"
    python -m apb.train_heads --model examples/models/vt-llama --texts /tmp/vt_heads_corpus.txt \
        --out benchmarks/results/vt_llama_heads.safetensors --seq-len 1024 --tail 64 --hidden 64 \
        --steps 800 --lr 3e-3 --device cpu
    python benchmarks/apb_ablation.py --retaining-heads benchmarks/results/vt_llama_heads.safetensors \
        --out benchmarks/results/apb_ablation_vt_llama.json

(`benchmarks/results/needle_llama_heads.safetensors` and `apb_ablation_needle_llama.json` are the
same for the needle model, with `variable_tracking` at its default three hops.)

The JSON holds, per length, each row's accuracy per task, its predictions and correctness
per sample, and the expected answers; `--table` prints a Markdown table of it.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from eval_rows import ROOT, chosen_rows, print_saved_table, run_rows, table  # noqa: E402
ROWS = {
    "dense": "dense",
    "apb (query)": "apb[compressor=query]",
    "apb (retaining-heads)": "apb[compressor=retaining-heads,retaining-heads={heads}]",
    "apb (random)": "apb[compressor=random]",
    "apb (no passing)": "apb[passing-len=0]",
    "star": "star",
    "apb (no anchor)": "apb[anchor-len=0]",
    "burst": "burst",
}


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "models", "vt-llama"))
    parser.add_argument("--tasks", default="variable_tracking[num-hops=1],niah_multikey",
                        help="comma-separated tasks, variants allowed (see `longctx eval --help`)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (see the module docstring)")
    parser.add_argument("--retaining-heads", default=None, metavar="FILE",
                        help="heads for the retaining-heads row (without it the row is left out)")
    parser.add_argument("--smoke", action="store_true", help="2 samples at 1,024 tokens")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--table", default=None, metavar="JSON", help="print the Markdown table of a results file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.samples = [1024], 2
    return args


def row_specs(args):
    """{row: `longctx eval` method spec} of the rows asked for (retaining heads only with a file)."""
    return {row: ROWS[row].format(heads=args.retaining_heads) for row in chosen_rows(args.rows, ROWS)
            if args.retaining_heads is not None or row != "apb (retaining-heads)"}


def ablation(args):
    """The results dict of `eval_rows.run_rows` for the rows asked for, plus the heads file."""
    results = run_rows(args.model, args.tasks, args.lengths, args.hosts, row_specs(args), args.samples, args.seed)
    results["retaining_heads"] = args.retaining_heads
    return results


def main(argv=None):
    """Run the ablation (or with --table print a saved one); prints the Markdown table."""
    args = parse_args(argv)
    if args.table:
        print_saved_table(args.table)
        return 0
    results = ablation(args)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
