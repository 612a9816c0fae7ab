"""Run under torchrun on every rank: each method of --methods on the same seeded token ids, in
one process group; rank 0 saves {method: EngineResult with hidden states} to --out
(torch.save). Used by test_torchrun_nodes.py to compare a multi-node job with single-process
references."""

import argparse

import torch

from launch.spmd import SPMDLongContextLM
from longctx.compare import random_prompt
from longctx.engine import Request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args()
    lm = SPMDLongContextLM(args.model, method="burst", timeout_s=60)
    doc_ids, query_ids = random_prompt(len(lm.tokenizer), args.length, 5, seed=11)
    results = {}
    for method in args.methods.split(","):
        results[method] = lm.engine.run(Request(doc_ids, query_ids, args.new_tokens, method, return_hidden=True))
    if lm.rank == 0:
        torch.save({"doc_ids": doc_ids, "query_ids": query_ids, "results": results}, args.out)
    lm.close()


if __name__ == "__main__":
    main()
