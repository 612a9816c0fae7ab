"""torchrun entry (SPMD): every rank runs this module with the same arguments.

    torchrun --nproc_per_node N -m launch.torchrun --model DIR --method burst --doc FILE --question Q

The world size is torchrun's (`--nproc_per_node` times its nodes): this entry has no --nproc,
and none of its options is one torchrun's parser would take for its own; the others are
`longctx generate`'s, and a request is checked as `generate` checks it (`longctx.request`).
Rank 0 prints the answer and the lines `longctx generate` prints after it (or one JSON object
with --json). A failing rank makes torchrun stop the others, and
collective timeouts bound every wait. An error is one line naming the rank, its machine and
address, and the cause (bad input: exit status 2; anything else, a collective that timed out
included: 1); an error every rank of a machine shares (bad input, a collective broken by a peer
that died) is printed once per machine, by its local rank 0.
"""

import argparse
import json
import os
import socket
import sys

from launch.interfaces import interface_address, source_address
from launch.local import describe_exception
from launch.spmd import SPMDLongContextLM
from longctx.answer_lines import answer_notes, summary_lines
from longctx.config import DefaultsHelpFormatter, add_request_arguments, add_run_arguments, config_from_args
from longctx.errors import CollectiveError, LongCtxError
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
                                 num_frames=prompt.num_frames, fps=prompt.fps, max_pixels=prompt.max_pixels,
                                 max_frames=prompt.max_frames)
        finally:
            lm.close()
    except (LongCtxError, OSError) as exc:  # bad input: every rank has the same error
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(f"longctx: error ({where(rank)}): {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # this rank failed (or a collective with a failed peer): one line, no traceback
        if not isinstance(exc, CollectiveError) or int(os.environ.get("LOCAL_RANK", 0)) == 0:
            message = str(exc) if isinstance(exc, CollectiveError) else describe_exception(exc)
            print(f"longctx: error ({where(rank)}): {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # at once: after a failed collective an ordinary exit can die in the process group's C++
    if rank == 0:
        if args.json:
            payload = result.to_dict()
            payload["answer"] = payload.pop("text")
            print(json.dumps(payload))
        else:
            print(f"answer: {result.text}")
            print("\n".join(summary_lines(result, lm.last_request.media)), flush=True)
            for note in answer_notes(result, lm.last_request, lm.tokenizer, lm.session.stop_ids):
                print(f"longctx: note: {note}", file=sys.stderr)
    return 0


def where(rank, environ=None):
    """'rank R on HOST, ADDRESS': this rank, its machine's name and the address its process
    group uses (the interface in GLOO_SOCKET_IFNAME, else the route to MASTER_ADDR)."""
    environ = os.environ if environ is None else environ
    address = interface_address(environ.get("GLOO_SOCKET_IFNAME", ""))
    if address is None:
        try:
            address = source_address(environ.get("MASTER_ADDR", "127.0.0.1"))
        except OSError:
            address = "address unknown"
    return f"rank {rank} on {socket.gethostname()}, {address}"


if __name__ == "__main__":
    sys.exit(main())
