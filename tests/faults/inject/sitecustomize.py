"""Fault injection for tests/faults: imported at start-up by every Python process whose PYTHONPATH
starts with this directory (the test's driver, its workers, torchrun's ranks).

`LONGCTX_FAULT=KIND:PHASE:RANK` makes worker RANK fail at PHASE:
  KIND   kill (SIGKILL to itself), raise (RuntimeError), hang (sleeps far past any timeout)
  PHASE  load (loading the model), prefill-first / prefill-middle (the first / middle layer's
         prefill attention), query (the query pass), decode (the first decoding step)
When `LONGCTX_FAULT_REACHED` names a file, the failing worker writes it (the fault and its
pid) just before it fails, so a test can wait for the fault instead of sleeping, and can tell
that the job failed because of the fault and not for some other reason.
Nothing happens without the variable, and nothing here is part of longctx.
"""

import os

FAULT = os.environ.get("LONGCTX_FAULT")


def _fail(kind):
    import signal
    import time

    reached = os.environ.get("LONGCTX_FAULT_REACHED")
    if reached:
        with open(reached, "w") as handle:
            handle.write(f"{FAULT} pid {os.getpid()}\n")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(3600)
    raise RuntimeError("injected fault")


def _install(kind, phase, rank):
    import longctx.engine as engine
    import longctx.models as models
    import longctx.models.loading as loading

    load_model = loading.load_model

    def faulty_load(path, device, dtype, family=None, rope_scaling=None):
        import torch.distributed as dist

        if phase == "load" and dist.is_initialized() and dist.get_rank() == rank:
            _fail(kind)
        return load_model(path, device, dtype, family, rope_scaling)

    loading.load_model = models.load_model = faulty_load
    attend = engine.WorkerContext.attend
    calls = {}

    def faulty_attend(self, layer, q, k, v, call):
        if self.rank == rank:
            layers = self.method.planner.shape.layers if self.method.planner.shape else 2
            key = (self.phase.name, layer)
            calls[key] = calls.get(key, 0) + 1
            if self.phase is engine.Phase.PREFILL:
                if (phase == "prefill-first" and layer == 0) or (phase == "prefill-middle" and layer == layers // 2):
                    _fail(kind)
            elif layer == 0 and ((phase == "query" and calls[key] == 1) or (phase == "decode" and calls[key] == 2)):
                _fail(kind)
        return attend(self, layer, q, k, v, call)

    engine.WorkerContext.attend = faulty_attend


if FAULT:
    _kind, _phase, _target = FAULT.split(":")
    _install(_kind, _phase, int(_target))
