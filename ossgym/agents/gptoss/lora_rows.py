"""LoRA on a few rows without autograd (the fast engine's decode): ``y + scaling * (x @ A[e]) @ B[e]`` per row.

At decode sizes a LoRA's cost is its launches, not its arithmetic: peft's forward is a cast, two products, a
scale and an add per projection, and the split expert LoRA (weights.py) two gathers and two batched products per
expert product. Here it is two Triton launches for up to three adapters that share their input (q, k and v read
the same hidden states):

1. ``t[s, m] = x[m] @ A_s[e_m]`` in fp32, one program per row, adapter and block of inputs (partial sums);
2. ``out_s[m, cols] = y_s[m, cols] + scaling_s * t[s, m] @ B_s[e_m][:, cols]`` (the partial sums added first),
   one program per row and block of columns across all the adapters' outputs.

The factors are read as they are held (peft's fp32 ``lora_A.weight.T``, the expert LoRA's ``[E, in, r]``), by
strides: no copies to refresh when the optimizer steps. The sum is computed in fp32 and cast to y's dtype, as
peft's forward does. Scripts/bench_lora_decode.py times the candidates this was chosen from (CUDA graphs, H200).

``lora_rows`` is a custom op (opaque to torch.compile, captured by CUDA graphs); it has no autograd, so callers
use it only through ``usable`` (CUDA, Triton, no gradient wanted, at most ``LORA_ROWS_MAX`` rows) and run the
differentiable products otherwise. Off CUDA the op computes the same sum in torch (tests).
"""

from __future__ import annotations

import torch

try:  # Triton is optional: CUDA only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs
    triton = tl = None

# Above this many rows (prefill, training) the products' tensor-core GEMMs win over one program per row.
LORA_ROWS_MAX = 512
MAX_SLOTS = 3  # adapters sharing one input per launch (q, k, v)
_ELEMENTS = 2048  # per program: BLOCK_K x R_PAD (first launch), R_PAD x BLOCK_N (second)


if triton is not None:

    @triton.jit
    def _lora_t_kernel(x_ptr, a0_ptr, a1_ptr, a2_ptr, t_ptr, row_expert_ptr, rows, slots, stride_xm, stride_ae,
                       stride_ak, stride_ar, K: tl.constexpr, R: tl.constexpr, R_PAD: tl.constexpr,
                       BLOCK_K: tl.constexpr, HAS_EXPERT: tl.constexpr):
        """t[split, slot, row, :R] = x[row, ks] @ a_slot[e][ks] in fp32 over the split's BLOCK_K inputs ks (a
        [E, K, R] by strides); grid (rows, slots, splits). Split over K, every program makes one load of x and of
        A: the factors are cold at decode (the weights stream through the cache between layers), so a serial loop
        over K would pay the memory latency once per step of the loop."""
        row = tl.program_id(0)
        slot = tl.program_id(1)
        split = tl.program_id(2)
        a_ptr = a0_ptr
        if slot == 1:
            a_ptr = a1_ptr
        if slot == 2:
            a_ptr = a2_ptr
        expert = tl.load(row_expert_ptr + row).to(tl.int64) if HAS_EXPERT else 0
        r = tl.arange(0, R_PAD)
        ks = split * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        xk = tl.load(x_ptr + row * stride_xm + ks, mask=k_mask, other=0.0).to(tl.float32)
        ak = tl.load(a_ptr + expert * stride_ae + ks[:, None] * stride_ak + r[None, :] * stride_ar,
                     mask=k_mask[:, None] & (r < R)[None, :], other=0.0).to(tl.float32)
        tl.store(t_ptr + ((split * slots + slot) * rows + row) * R_PAD + r, tl.sum(xk[:, None] * ak, axis=0))

    @triton.jit
    def _lora_b_kernel(t_ptr, b0_ptr, b1_ptr, b2_ptr, y0_ptr, y1_ptr, y2_ptr, o0_ptr, o1_ptr, o2_ptr,
                       row_expert_ptr, s0, s1, s2, n0, n1, n2, rows, slots, stride_be, stride_br, stride_bn,
                       R: tl.constexpr, R_PAD: tl.constexpr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
                       BLOCK_N: tl.constexpr, NB0: tl.constexpr, NB1: tl.constexpr, HAS_EXPERT: tl.constexpr):
        """out_slot[row, cols] = y_slot[row, cols] + s_slot * (the sum of t's splits)[slot, row] @ b_slot[e][:, cols]
        (y, out contiguous [rows, n_slot]; b [E, R, n] by strides); grid (rows, column blocks of all slots: NB0,
        NB1, then slot 2's)."""
        row = tl.program_id(0)
        block = tl.program_id(1)
        slot = 0
        b_ptr = b0_ptr
        y_ptr = y0_ptr
        o_ptr = o0_ptr
        scaling = s0
        n = n0
        if block >= NB0:
            slot = 1
            block -= NB0
            b_ptr = b1_ptr
            y_ptr = y1_ptr
            o_ptr = o1_ptr
            scaling = s1
            n = n1
            if block >= NB1:
                slot = 2
                block -= NB1
                b_ptr = b2_ptr
                y_ptr = y2_ptr
                o_ptr = o2_ptr
                scaling = s2
                n = n2
        expert = tl.load(row_expert_ptr + row).to(tl.int64) if HAS_EXPERT else 0
        r = tl.arange(0, R_PAD)
        cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
        c_mask = cols < n
        sp = tl.arange(0, SPLITS_PAD)
        parts = tl.load(t_ptr + ((sp[:, None] * slots + slot) * rows + row) * R_PAD + r[None, :],
                        mask=(sp < SPLITS)[:, None], other=0.0)
        t = tl.sum(parts, axis=0)
        bt = tl.load(b_ptr + expert * stride_be + r[:, None] * stride_br + cols[None, :] * stride_bn,
                     mask=(r < R)[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * n + cols, mask=c_mask, other=0.0).to(tl.float32)
        out = y + scaling * tl.sum(t[:, None] * bt, axis=0)
        tl.store(o_ptr + row * n + cols, out.to(o_ptr.dtype.element_ty), mask=c_mask)


def on_triton(x: torch.Tensor) -> bool:
    """Whether the op runs its Triton launches for x (CUDA with Triton) rather than the torch sum (tests patch
    this to run the op's torch sum where the engine would run the launches)."""
    return triton is not None and x.is_cuda


def usable(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether `lora_rows` should replace the products for rows x [M, in] (and the factors `tensors`): on
    Triton, at most LORA_ROWS_MAX rows, and no gradient wanted through any of them."""
    if not on_triton(x) or x.shape[0] > LORA_ROWS_MAX:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors)))


def _tiles(rank: int) -> tuple[int, int, int]:
    r_pad = max(2, 1 << (rank - 1).bit_length())
    return r_pad, max(16, _ELEMENTS // r_pad), max(32, _ELEMENTS // r_pad)


@torch.library.custom_op("ossgym::lora_rows", mutates_args=())
def lora_rows(x: torch.Tensor, ys: list[torch.Tensor], a: list[torch.Tensor], b: list[torch.Tensor],
              scaling: list[float], row_expert: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[y_s + scaling_s * (x[m] @ a_s[e_m]) @ b_s[e_m] per row m] for up to MAX_SLOTS adapters s sharing x [M, in]:
    a_s [E, in, r], b_s [E, r, out_s] (any strides, the same across slots), y_s [M, out_s]; e_m = row_expert[m]
    (None: E is 1). In fp32, cast to y_s's dtype. No autograd: see `usable`."""
    if not 1 <= len(ys) <= MAX_SLOTS or not len(ys) == len(a) == len(b) == len(scaling):
        raise ValueError(f"lora_rows takes 1 to {MAX_SLOTS} adapters with one y, a, b and scaling each")
    rows = x.shape[0]
    if triton is None or not x.is_cuda:
        e = row_expert.long() if row_expert is not None else torch.zeros(rows, dtype=torch.long, device=x.device)
        return [(y.float() + s * torch.bmm(torch.bmm(x.float()[:, None], a_s[e].float()), b_s[e].float())[:, 0])
                .to(y.dtype) for y, a_s, b_s, s in zip(ys, a, b, scaling)]
    return _triton_rows(x, ys, a, b, scaling, row_expert)


def _triton_rows(x, ys, a, b, scaling, row_expert):
    """lora_rows' two Triton launches (any device Triton runs on: CUDA, or its interpreter in checks)."""
    if any(t.stride() != a[0].stride() for t in a) or any(t.stride() != b[0].stride() for t in b):
        raise ValueError("lora_rows: the adapters' factors must share their strides")
    rows, k = x.shape
    rank = a[0].shape[-1]
    r_pad, block_k, block_n = _tiles(rank)
    slots = len(ys)
    ys = [y.contiguous() for y in ys]
    outs = [torch.empty_like(y) for y in ys]
    if rows == 0:
        return outs
    x = x.contiguous()
    splits = triton.cdiv(k, block_k)
    t = torch.empty(splits, slots, rows, r_pad, dtype=torch.float32, device=x.device)
    expert = row_expert if row_expert is not None else t  # unread without HAS_EXPERT
    has_expert = row_expert is not None
    pad = lambda items: list(items) + [items[0]] * (MAX_SLOTS - slots)  # noqa: E731 - unused slots: slot 0's
    a3, b3, y3, o3, s3 = pad(a), pad(b), pad(ys), pad(outs), pad([float(s) for s in scaling])
    n3 = [y.shape[1] for y in y3]
    nb = [triton.cdiv(n, block_n) for n in n3]
    _lora_t_kernel[(rows, slots, splits)](x, *a3, t, expert, rows, slots, x.stride(0), a[0].stride(0),
                                          a[0].stride(1), a[0].stride(2), K=k, R=rank, R_PAD=r_pad, BLOCK_K=block_k,
                                          HAS_EXPERT=has_expert, num_warps=4)
    _lora_b_kernel[(rows, sum(nb[:slots]))](t, *b3, *y3, *o3, expert, *s3, *n3, rows, slots, b[0].stride(0),
                                            b[0].stride(1), b[0].stride(2), R=rank, R_PAD=r_pad, SPLITS=splits,
                                            SPLITS_PAD=max(2, triton.next_power_of_2(splits)), BLOCK_N=block_n,
                                            NB0=nb[0], NB1=nb[1], HAS_EXPERT=has_expert, num_warps=4)
    return outs


@lora_rows.register_fake
def _(x, ys, a, b, scaling, row_expert=None):
    return [torch.empty_like(y) for y in ys]


__all__ = ["LORA_ROWS_MAX", "lora_rows", "usable"]
