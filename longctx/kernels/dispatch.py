"""Which kernel computes an attention call: the backends, and how `auto` chooses.

Backends (`--kernel-backend`):

* "auto": on the CPU, PyTorch's fused CPU op wherever it serves the call, else the
  reference. On CUDA, PyTorch's fused CUDA ops (`longctx.kernels.fused`: flash, or
  efficient for float32) unless this device's calibration (`longctx plan --calibrate
  --device cuda`, `longctx.kernels.calibration`) measured another kernel faster for the
  call's shape class: the Triton kernel (when installed) or cuDNN's op. Calls no fused op
  serves go to Triton when it is installed, else to the reference.
* "torch": the fused ops wherever they serve the call, the reference otherwise.
* "flash-attn": flash-attn's `flash_attn_func` for the CUDA 16-bit calls it serves, the rest
  as "torch"; a clear error when the flash_attn package does not import.
* "triton": the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1).
* "reference": the chunked torch reference (the test oracle).

`choose` is a pure function of the backend, the call's shape (`CallShape`), the device's
calibration entries and whether Triton is installed, so every device's choices are tested
on the CPU. The CPU paths never import Triton.
"""

import functools
from dataclasses import dataclass

import torch

from longctx.kernels.fused import op_for

BACKENDS = ("auto", "torch", "reference", "triton", "flash-attn")


@dataclass(frozen=True)
class CallShape:
    """What choosing a kernel looks at: device type ("cpu", "cuda") and compute capability
    (major, minor; None on the CPU), dtype, head counts, lengths, head dims, the mask (causal;
    `apb`: some query rows skip a key prefix) and whether the call folds into a running state."""

    device: str
    capability: tuple
    dtype: torch.dtype
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    head_dim_v: int
    causal: bool
    apb: bool
    resume: bool

    @classmethod
    def of(cls, q, k, v, *, causal, anchor_len=0, prefix_len=0, resume=False):
        """The CallShape of attention of q [B, Hq, Sq, D] over k/v [B, Hkv, Sk, D(v)]."""
        capability = _capability(q.device) if q.device.type == "cuda" else None
        return cls(q.device.type, capability, q.dtype, q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3],
                   v.shape[3], bool(causal), anchor_len > 0 and prefix_len > 0 and q.shape[2] > 0, resume)


@dataclass(frozen=True)
class Choice:
    """The kernel for a call: "fused" (with the fused op's name, see `longctx.kernels.fused`),
    "triton" or "reference"."""

    kernel: str
    op: str = None


def choose(backend, call, calibration=(), triton_available=False):
    """The `Choice` for `call` (a CallShape) under `backend` (one of BACKENDS; ValueError
    otherwise). `calibration`: this device's measured entries (`longctx.kernels.calibration`),
    consulted by "auto" on CUDA; `triton_available`: whether the triton package imports."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("reference", "triton"):
        return Choice(backend)
    cuda_op = "flash-attn" if backend == "flash-attn" else "flash"
    if backend == "auto" and call.device == "cuda":
        from longctx.kernels.calibration import winner

        measured = winner(calibration, call)
        if measured == "triton" and triton_available:
            return Choice("triton")
        if measured == "cuda-cudnn":
            cuda_op = "cudnn"
    op = op_for(call.device, call.dtype, call.head_dim, call.head_dim_v, call.capability, cuda_op)
    if op is not None:
        return Choice("fused", op)
    if backend == "auto" and call.device == "cuda" and triton_available:
        return Choice("triton")
    return Choice("reference")


@functools.lru_cache(maxsize=None)
def _capability(device):
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def triton_available():
    """True when the `triton` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["BACKENDS", "CallShape", "Choice", "choose", "triton_available"]
