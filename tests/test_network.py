"""Network hygiene: local jobs rendezvous on loopback through a store the driver keeps listening
(no bind-then-close port race), so several jobs run at once on one machine."""

import threading

from helpers import dense_result, relative_error
from longctx.api import LongContextLM
from longctx.compare import random_prompt


def test_two_jobs_at_once_on_one_machine(tiny_model):
    path = tiny_model("llama")
    prompts = [random_prompt(256, 150 + 20 * index, 4, seed=index) for index in range(2)]
    results, errors = [None, None], []

    def job(index):
        try:
            with LongContextLM(path, method="burst", nproc=2) as lm:
                results[index] = lm.run_ids(*prompts[index], max_new_tokens=3, return_hidden=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for (doc, question), result in zip(prompts, results):
        reference = dense_result(path, doc, question, max_new_tokens=3)
        assert relative_error(result, reference) <= 1e-4 and result.tokens == reference.tokens


def listening_addresses(pids):
    """(address hex, port) of every TCP socket in LISTEN state owned by `pids` (IPv4 and IPv6)."""
    import os

    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    address, port = fields[1].split(":")
                    found.append((address, int(port, 16)))
    return found


def test_driver_and_workers_listen_on_loopback_only(tiny_model):
    import os

    with LongContextLM(tiny_model("llama"), method="burst", nproc=2) as lm:
        lm.run_ids([5] * 40, [6], max_new_tokens=1)
        pids = [os.getpid()] + [proc.pid for proc in lm._launcher._procs]
        listening = listening_addresses(pids)
    loopback = ("0100007F", "00000000000000000000000001000000")
    assert listening and all(address in loopback for address, _ in listening), listening
