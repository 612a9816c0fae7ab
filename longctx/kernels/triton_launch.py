"""How the Triton attention kernels are launched: configurations, GQA packing, split-K, TMA.

`plan_launch` is a pure function of the shapes, dtype and `Target`; the
runtime (`longctx.kernels.triton_attention`) and the ahead-of-time compile test
(`tests/test_triton_compile.py`, through `longctx.kernels.triton_aot`) both build their
launches with `build_launches`, so the test compiles what runs.

Tensor descriptors (TMA) for the K/V loads are behind a configuration: `Target.tma`, on for a
GPU when LONGCTX_TRITON_TMA=1 is set (sm_90 and later only), and used for a 16-bit call only
where the K/V layout allows it (unit stride in the head dim, 16-byte aligned rows and bases;
float32 keeps pointer loads: its descriptor builds spill at head dim 256). They
are compile-checked for sm_90 like every other build; `benchmarks/gpu_first_light.py` checks
them on a GPU before anyone should turn them on by default.
"""

import functools
import os
from dataclasses import dataclass

import torch
import triton

from longctx.kernels.triton_kernels import _attention_fwd_kernel, _combine_splits_kernel, _kernel_is_interpreted

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
TMA_ENV = "LONGCTX_TRITON_TMA"


@dataclass(frozen=True)
class Target:
    """What a launch plan depends on besides the shapes: the CUDA compute capability as
    10 * major + minor (80, 90; 0 = the Triton interpreter), the number of SMs, and whether
    K/V may be loaded through tensor descriptors (`tma`)."""

    arch: int
    num_sms: int
    tma: bool = False

    @property
    def interpreted(self):
        return self.arch == 0


# The interpreter pretends to be a small GPU so that test shapes exercise split-K.
INTERPRETER = Target(arch=0, num_sms=4)
MAX_SPLITS = 64


@functools.lru_cache(maxsize=None)
def _device_target(device_index):
    props = torch.cuda.get_device_properties(device_index)
    return Target(arch=10 * props.major + props.minor, num_sms=props.multi_processor_count)


def tma_requested():
    """True when LONGCTX_TRITON_TMA=1 asks for tensor-descriptor K/V loads."""
    return os.environ.get(TMA_ENV, "") == "1"


def gpu_target(device_index):
    """The `Target` of a CUDA device (compute capability, SM count; TMA where requested and
    the part has it, sm_90 and later)."""
    target = _device_target(device_index)
    return Target(target.arch, target.num_sms, tma=tma_requested() and target.arch >= 90)


def target_for(q):
    """The `Target` to plan for q's device; RuntimeError when the kernel cannot run there.
    The interpreter takes the TMA request too, so the descriptor path runs in CPU tests."""
    if q.is_cuda:
        return gpu_target(q.device.index if q.device.index is not None else torch.cuda.current_device())
    if _kernel_is_interpreted():
        return Target(INTERPRETER.arch, INTERPRETER.num_sms, tma=tma_requested())
    raise RuntimeError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 before importing triton)")


def _config(block_m, block_n, num_warps, num_stages):
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}


def tune_configs(target, dtype, block_d, block_dv):
    """Candidate configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) of the main kernel
    for padded head dims on `target`; more than one means the runtime autotunes among them.

    The interpreter gets one small configuration that still spans several key and query
    blocks (BLOCK_M != BLOCK_N exercises the diagonal logic). On GPUs the 16-bit tiles have
    BLOCK_M >= 64 (a Hopper warpgroup MMA) and the candidates are few, so autotuning
    compiles little; float32 runs IEEE dots on the FMA units, whose operands live in
    registers, so its tiles are small. Every configuration fits the shared memory of its
    part and ptxas reports no register spill for its cubin, fresh, resumed or with TMA, as
    Triton builds it (tests/test_triton_compile.py fails on a spill;
    benchmarks/kernel_report.py lists registers per build). That rules out, on sm_90,
    128 x 128 tiles pipelined at head dim 128 and 128-row tiles at head dim 256.
    """
    if target.interpreted:
        return [_config(32, 16, 4, 1)]
    width = max(block_d, block_dv)
    if dtype == torch.float32:
        return [_fp32_config(width, target.arch)]
    if target.arch >= 90:
        if width <= 64:
            return [_config(128, 64, 4, 3), _config(128, 128, 8, 3)]
        if width <= 128:
            return [_config(128, 64, 8, 3), _config(128, 128, 8, 1), _config(64, 64, 4, 3)]
        return [_config(64, 32, 8, 3), _config(64, 32, 8, 2)]
    if width <= 64:
        return [_config(128, 64, 8, 3), _config(64, 64, 4, 3)]
    if width <= 128:
        return [_config(128, 64, 8, 2), _config(64, 64, 8, 2)]
    return [_config(64, 32, 8, 2)]


def split_config(target, dtype, block_d, block_dv):
    """The one configuration of the split-K path (few query rows, many keys): a 64-row tile
    (the smallest Hopper warpgroup MMA) and key blocks sized to the head dim."""
    if target.interpreted:
        return _config(32, 16, 4, 1)
    width = max(block_d, block_dv)
    if dtype == torch.float32:
        return _fp32_config(width, target.arch)
    if width > 128:
        return _config(64, 32, 8, 2)
    return _config(64, 64, 4, 3) if target.arch >= 90 else _config(64, 32, 4, 3)


def _fp32_config(width, arch):
    """float32 on a GPU: one configuration per head-dim class and part, spill-free fresh or
    resumed for every GQA group and mask (ptxas places these registers unevenly: the
    configuration that is spill-free on one part spills on the other)."""
    if width <= 64:
        return _config(32, 16, 4, 2) if arch >= 90 else _config(32, 32, 4, 2)
    if width <= 128:
        return _config(32, 16, 8, 2) if arch >= 90 else _config(32, 16, 4, 2)
    return _config(16, 16, 8, 2)


def choose_pack(group, block_m):
    """Query heads packed into one tile: the largest divisor of the GQA group that is at
    most `block_m` (the smallest BLOCK_M the call may use), so a tile holds >= 1 position."""
    return max(d for d in range(1, min(group, block_m) + 1) if group % d == 0)


def choose_splits(programs, key_blocks, target):
    """Key shares per tile: 1 unless the grid (`programs` without splitting) fills fewer
    than one wave of the target's SMs; then enough shares for about two waves, each share
    at least a few key blocks (2 in the interpreter, 4 on GPUs), at most MAX_SPLITS."""
    if programs >= target.num_sms:
        return 1
    min_blocks = 2 if target.interpreted else 4
    return max(1, min(triton.cdiv(2 * target.num_sms, programs), key_blocks // min_blocks, MAX_SPLITS))


@dataclass(frozen=True)
class LaunchPlan:
    """How one attention call runs: GQA packing, main-kernel configurations (autotuned when
    more than one), and the split-K shares (`splits` == 1: no split, no combine kernel)."""

    pack: int
    configs: tuple
    splits: int
    split_len: int


def plan_launch(batch, q_heads, kv_heads, q_len, k_len, block_d, block_dv, dtype, target):
    """The `LaunchPlan` for one call; a pure function of its arguments (see `Target`)."""
    candidates = tune_configs(target, dtype, block_d, block_dv)
    split = split_config(target, dtype, block_d, block_dv)
    pack = choose_pack(q_heads // kv_heads, min(c["BLOCK_M"] for c in (*candidates, split)))
    tiles = triton.cdiv(q_len, split["BLOCK_M"] // pack)
    key_blocks = triton.cdiv(k_len, split["BLOCK_N"])
    splits = choose_splits(batch * (q_heads // pack) * tiles, key_blocks, target)
    if splits == 1:
        return LaunchPlan(pack, tuple(candidates), 1, k_len)  # one share: all keys
    blocks_per_split = triton.cdiv(key_blocks, splits)
    splits = triton.cdiv(key_blocks, blocks_per_split)  # no empty shares
    return LaunchPlan(pack, (split,), splits, blocks_per_split * split["BLOCK_N"])


@dataclass
class Launch:
    """One kernel launch: the jitted function, its arguments (runtime values and constexprs
    except the tuned ones), the candidate configurations and the grid for a configuration."""

    kernel: object
    args: dict
    configs: tuple
    grid: object  # config dict -> grid tuple

    @property
    def name(self):
        return self.kernel.__name__


def _padded_dim(dim):
    """Smallest power of two >= dim and >= 16 (tl.dot needs inner dims of at least 16)."""
    return max(16, triton.next_power_of_2(dim))


def _pad_last(x, width):
    """Zero-pad the last dim of x to `width` (a copy only when padding is needed)."""
    if x.shape[-1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def tma_ready(*tensors):
    """True when tensor descriptors can read every tensor: unit stride in the last dim, the
    other strides and the base address 16-byte aligned (meta tensors count as aligned)."""
    for tensor in tensors:
        size = tensor.element_size()
        if tensor.stride(-1) != 1 or any(stride * size % 16 for stride in tensor.stride()[:-1]):
            return False
        if tensor.device.type != "meta" and tensor.data_ptr() % 16:
            return False
    return True


def _tune_bucket(q_len, k_len):
    """A coarse size class of a call (log2 of both lengths): the autotune key, so a new
    length retunes only when it changes class."""
    return 64 * q_len.bit_length() + k_len.bit_length()


def build_launches(q, k, v, out, lse, *, causal, anchor_len, prefix_len, scale, resume, target):
    """The launches that compute attention of q over k/v into (out, lse), per `plan_launch`.

    q, k, v as in `triton_attention`; out [B, Hq, Sq, Dv] and lse [B, Hq, Sq] are written
    (with `resume`, they hold the running float32 state and are updated in place). Works on
    meta tensors too: the compile test builds the very launches the runtime would run.
    Allocates the zero-padded inputs and the split-K partials.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len, head_dim_v = k.shape[1], k.shape[2], v.shape[-1]
    block_d, block_dv = _padded_dim(head_dim), _padded_dim(head_dim_v)
    qp, kp, vp = _pad_last(q, block_d), _pad_last(k, block_d), _pad_last(v, block_dv)
    plan = plan_launch(batch, q_heads, kv_heads, q_len, k_len, block_d, block_dv, q.dtype, target)
    if plan.splits > 1:
        rows = batch * q_heads * q_len
        part = torch.empty(plan.splits, rows, block_dv, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(plan.splits, rows, dtype=torch.float32, device=q.device)
        dest = part.view(plan.splits, batch, q_heads, q_len, block_dv)
        dest_lse = part_lse.view(plan.splits, batch, q_heads, q_len)
        dest_strides, dest_lse_strides = dest.stride(), dest_lse.stride()
    else:
        dest, dest_lse = out, lse
        dest_strides, dest_lse_strides = (0, *out.stride()), (0, *lse.stride())
    batch_packs = batch * (q_heads // plan.pack)
    main = Launch(
        kernel=_attention_fwd_kernel,
        args=dict(
            Q=qp, K=kp, V=vp, Out=dest, Lse=dest_lse,
            stride_qb=qp.stride(0), stride_qh=qp.stride(1), stride_qm=qp.stride(2), stride_qd=qp.stride(3),
            stride_kb=kp.stride(0), stride_kh=kp.stride(1), stride_kn=kp.stride(2), stride_kd=kp.stride(3),
            stride_vb=vp.stride(0), stride_vh=vp.stride(1), stride_vn=vp.stride(2), stride_vd=vp.stride(3),
            stride_os=dest_strides[0], stride_ob=dest_strides[1], stride_oh=dest_strides[2],
            stride_om=dest_strides[3], stride_od=dest_strides[4],
            stride_ls=dest_lse_strides[0], stride_lb=dest_lse_strides[1], stride_lh=dest_lse_strides[2],
            stride_lm=dest_lse_strides[3],
            batch_packs=batch_packs, head_packs=q_heads // plan.pack,
            q_len=q_len, k_len=k_len, anchor_len=max(0, int(anchor_len)), prefix_len=max(0, int(prefix_len)),
            qk_scale=scale * LOG2E, head_dim_v=head_dim_v if plan.splits == 1 else block_dv,
            num_splits=plan.splits, split_len=plan.split_len, tune_bucket=_tune_bucket(q_len, k_len),
            GROUP=q_heads // kv_heads, PACK=plan.pack, CAUSAL=bool(causal), RESUME=bool(resume) and plan.splits == 1,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            # The interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584);
            # 16-bit products are exact in float32, so upcasting there changes no result.
            DOT_UPCAST=target.interpreted and q.dtype != torch.float32,
            KV_TMA=target.tma and q.dtype != torch.float32 and tma_ready(kp, vp),
            BLOCK_D=block_d, BLOCK_DV=block_dv,
        ),
        configs=plan.configs,
        grid=lambda config: (batch_packs * plan.splits * triton.cdiv(q_len, config["BLOCK_M"] // plan.pack),),
    )
    if plan.splits == 1:
        return [main]
    combine = Launch(
        kernel=_combine_splits_kernel,
        args=dict(
            Part=part, PartLse=part_lse, Out=out, Lse=lse,
            stride_ps=part.stride(0), stride_pls=part_lse.stride(0),
            stride_ob=out.stride(0), stride_oh=out.stride(1), stride_om=out.stride(2), stride_od=out.stride(3),
            stride_lb=lse.stride(0), stride_lh=lse.stride(1), stride_lm=lse.stride(2),
            q_heads=q_heads, q_len=q_len, head_dim_v=head_dim_v, num_splits=plan.splits,
            RESUME=bool(resume), BLOCK_DV=block_dv,
        ),
        configs=({"num_warps": 1 if block_dv <= 64 else 2, "num_stages": 1},),
        grid=lambda config: (batch * q_heads * q_len,),
    )
    return [main, combine]


@functools.lru_cache(maxsize=None)
def _autotuned(kernel):
    """`kernel` under triton.autotune: the candidates come from `tune_configs` on every call
    (the pruning hook), the key is the head dims, GQA packing, mask kind, state and size
    class, and the output (the running state when resuming) is restored after each trial."""

    def candidates(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = args["Q"]
        return [_as_triton_config(c) for c in tune_configs(target_for(q), q.dtype, args["BLOCK_D"], args["BLOCK_DV"])]

    every_config = [_as_triton_config(_config(m, n, w, s)) for m in (32, 64, 128) for n in (32, 64, 128)
                    for w in (4, 8) for s in (1, 2, 3)]
    return triton.autotune(
        configs=every_config,
        key=["BLOCK_D", "BLOCK_DV", "GROUP", "PACK", "CAUSAL", "RESUME", "KV_TMA", "tune_bucket"],
        prune_configs_by={"early_config_prune": candidates},
        restore_value=["Out", "Lse"],
    )(kernel)


def _as_triton_config(config):
    return triton.Config({"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"]},
                         num_warps=config["num_warps"], num_stages=config["num_stages"])


@functools.lru_cache(maxsize=None)
def _set_descriptor_allocator():
    """Device-side tensor descriptors live in scratch memory the launch asks Triton for;
    Triton gets it from the allocator set here (once, when a TMA launch first runs)."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def run_launch(launch):
    """Launch on the device: one configuration directly, several through the autotuner."""
    if launch.args.get("KV_TMA") and launch.args["Q"].is_cuda:
        _set_descriptor_allocator()
    if len(launch.configs) == 1:
        config = launch.configs[0]
        launch.kernel[launch.grid(config)](**launch.args, **config)
    else:
        _autotuned(launch.kernel)[launch.grid](**launch.args)


__all__ = ["Target", "INTERPRETER", "gpu_target", "target_for", "tune_configs", "split_config", "plan_launch",
           "build_launches", "run_launch", "tma_ready", "tma_requested"]
