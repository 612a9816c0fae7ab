"""torchrun entry (SPMD): every rank runs this module with the same arguments.

    torchrun --nproc_per_node N -m launch.torchrun --model DIR --method burst --doc FILE --question Q

The world size is torchrun's (`--nproc_per_node` times its nodes): this entry has no --nproc,
and none of its options is one torchrun's parser would take for its own; the others are
`longctx generate`'s, and a request is checked as `generate` checks it (`longctx.request`).
Rank 0 prints the answer (or one JSON object with --json). A failing rank makes torchrun stop
the others, and collective timeouts bound every wait.
"""

import argparse
import json
import os
import sys

from launch.spmd import SPMDLongContextLM
from longctx.config import DefaultsHelpFormatter, add_request_arguments, add_run_arguments, config_from_args
from longctx.errors import LongCtxError
from longctx.request import prompt_from_args


def build_parser(argv=None):
    """Arguments: the shared run options plus the request's (document or video, question,
    output format); `argv` is read for plug-in methods' options."""
    parser = argparse.ArgumentParser(prog="python -m launch.torchrun", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    add_run_arguments(parser, with_nproc=False, argv=argv)  # the world size is torchrun's --nproc-per-node
    add_request_arguments(parser)
    return parser


def main(argv=None):
    """Run one request on this rank; rank 0 prints the result. Returns the exit status."""
    args = build_parser(argv).parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    try:
        config = config_from_args(args)
        prompt = prompt_from_args(args)
        lm = SPMDLongContextLM(config.model, method=config.method, **config.pool_options())
        try:
            result = lm.generate(prompt.document, prompt.question, args.max_new_tokens, video=prompt.video,
                                 num_frames=prompt.num_frames, fps=prompt.fps)
        finally:
            lm.close()
    except (LongCtxError, OSError) as exc:
        print(f"longctx: error (rank {rank}): {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        if args.json:
            payload = result.to_dict()
            payload["answer"] = payload.pop("text")
            print(json.dumps(payload))
        else:
            print(f"answer: {result.text}")
            print(f"method {result.method} on {result.nproc} workers: prefill {result.prefill_s:.3f} s, "
                  f"decode {result.decode_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
