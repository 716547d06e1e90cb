"""How expert weights are held and multiplied: the one seam between the model code and the weight formats.

The MoE (moe.py), the fast engine and the training forward (mxfp4.py's ``GptOssExperts`` replacement) multiply
expert weights only through ``grouped_linear`` here, never by reading a dense tensor themselves (gpt-fast keeps
quantisation out of model.py the same way). An expert weight is either

- a dense tensor ``[E, in, out]`` (Hugging Face's layout: ``y = x @ W[e]``), bf16 or fp32, or
- ``Mxfp4(blocks, scales)`` in the official gpt-oss checkpoint layout: ``blocks`` uint8 ``[E, out, in/32, 16]``
  (two FP4 E2M1 values a byte, the low nibble first) and ``scales`` uint8 E8M0 ``[E, out, in/32]`` (exponent
  bias 127), one scale per 32 consecutive input features.

MXFP4 products never build a dense copy of a layer's experts: on CUDA a Triton kernel dequantizes each tile
in registers inside the grouped GEMM (no host sync, so CUDA graphs capture it); elsewhere a plain torch loop
dequantizes one routed expert at a time. Input gradients flow through frozen MXFP4 weights (a custom op with
its own backward, the transposed product), so LoRA trains on top of them, with activation checkpointing too.

Split expert LoRA (``LoraFactors``): each routed token-expert pair gets ``scaling * (x @ A[e]) @ B[e]`` through
two grouped products of rank r (at decode sizes without autograd, lora_rows.py's two launches); the dense delta
``A[e] @ B[e]`` is never formed.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ossgym.agents.gptoss import lora_rows
from ossgym.errors import ConfigError

log = logging.getLogger(__name__)

BLOCK = 32  # MXFP4: input features sharing one E8M0 scale
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
EXPERT_CHUNK_TOKENS = 2048  # tokens per experts pass (see experts_forward); None: the whole sequence at once
_grouped_mm = getattr(torch, "_grouped_mm", None) or getattr(F, "grouped_mm", None)

try:  # Triton is optional: CUDA only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs
    triton = tl = None


class Mxfp4(NamedTuple):
    """An expert-stacked weight in the official MXFP4 layout (see the module docstring)."""

    blocks: torch.Tensor  # uint8 [E, out, in/32, 16]
    scales: torch.Tensor  # uint8 [E, out, in/32]

    @property
    def in_features(self) -> int:
        return self.blocks.shape[-2] * BLOCK

    @property
    def out_features(self) -> int:
        return self.blocks.shape[-3]

    @property
    def num_experts(self) -> int:
        return self.blocks.shape[0]

    def dense(self, dtype: torch.dtype = torch.bfloat16, expert: int | None = None) -> torch.Tensor:
        """Dequantized in HF's layout: [E, in, out] (or [in, out] for one expert)."""
        if expert is None:
            return dequantize_mxfp4(self.blocks, self.scales, dtype).transpose(-1, -2)
        return dequantize_mxfp4(self.blocks[expert], self.scales[expert], dtype).transpose(-1, -2)


class LoraFactors(NamedTuple):
    """Split LoRA of one expert-stacked weight: delta[e] = scaling * a[e] @ b[e], never formed."""

    a: torch.Tensor  # [E, in, r]
    b: torch.Tensor  # [E, r, out]
    scaling: float


ExpertWeight = torch.Tensor | Mxfp4


# ------------------------------------------------------------------------------------------ the MXFP4 format
def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[..., out, in/32, 16] uint8 blocks + [..., out, in/32] E8M0 scales -> [..., out, in] values (exact)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    lo, hi = lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]
    values = torch.stack((lo, hi), dim=-1).flatten(-2)  # [..., G, 32], low nibble first
    values = torch.ldexp(values, scales.to(torch.int32)[..., None] - 127)
    return values.flatten(-2).to(dtype)


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., out, in] -> (blocks, scales) in the official layout, by the OCP MX rule.

    Per 32-value group the shared exponent is floor(log2(amax)) - 2 (E2M1's largest exponent), values are
    rounded to the nearest FP4 value (ties to even) and saturate at 6. The encoding is canonical:
    quantizing its own dequantization gives back the same bits.
    """
    *prefix, out, inp = weight.shape
    if inp % BLOCK:
        raise ValueError(f"in_features {inp} is not a multiple of {BLOCK}")
    w = weight.float().reshape(*prefix, out, inp // BLOCK, BLOCK)
    amax = w.abs().amax(-1)
    exp = torch.floor(torch.log2(amax.clamp(min=2.0**-126))) - 2  # amax 0 or tiny -> the smallest scale
    exp = exp.clamp(-127, 127)
    scaled = w / torch.ldexp(torch.ones_like(exp), exp.int())[..., None]
    mag = scaled.abs().clamp(max=6.0)
    grid = torch.tensor(FP4_VALUES[:8], device=w.device)
    # nearest grid value, ties to the even code (E2M1 codes: even = mantissa bit 0)
    dist = (mag[..., None] - grid).abs()
    best = dist.min(-1, keepdim=True).values
    ties = dist == best
    even = torch.arange(8, device=w.device) % 2 == 0
    code = torch.where(ties & even, 0, torch.where(ties, 1, 2)).argmin(-1).to(torch.uint8)
    code = code | (torch.signbit(scaled).to(torch.uint8) << 3)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).reshape(*prefix, out, inp // BLOCK, BLOCK // 2)
    scales = (exp + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def quantize_experts(weight: torch.Tensor) -> Mxfp4:
    """An HF-layout expert weight [E, in, out] as Mxfp4, one expert at a time (transient: one expert in fp32)."""
    parts = [quantize_mxfp4(weight[e].transpose(0, 1)) for e in range(weight.shape[0])]
    return Mxfp4(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]))


# ------------------------------------------------------------------------------------------- Triton kernel
if triton is not None:

    @triton.jit
    def _e2m1(nibble):
        """E2M1 codes (int32, 0..15) -> exact float32 by bit placement: the sign to bit 31, exponent and mantissa
        to bits 23..22, which reads as the value times 2^-126 (code 1, 0.5, lands on a subnormal); one multiply
        by 2^126 restores it (no lookup, no exp2)."""
        bits = ((nibble & 7) << 22) | ((nibble & 8) << 28)
        return bits.to(tl.float32, bitcast=True) * 8.507059173023462e37  # 2^126

    @triton.jit
    def _e8m0(scale):
        """E8M0 scales (int32) -> 2^(scale - 127) as float32 by placing them in the exponent field (exact for 1..254;
        0, i.e. 2^-127, reads as 0)."""
        return (scale << 23).to(tl.float32, bitcast=True)

    @triton.jit
    def _dequant_parts(blocks_ptr, scales_ptr, expert, out_idx, out_mask, in_start, in_features,
                       stride_be, stride_bo, stride_se, stride_so, BLOCK_IN: tl.constexpr):
        """The weight tile for output features out_idx and inputs in_start + 0..BLOCK_IN-1 as stored: (low, high)
        nibble values [len(out_idx), BLOCK_IN / 32 groups, 16] (the even and the odd input features). Bytes load as
        16-byte rows and scales once per group (not once per byte), applied by broadcast."""
        GROUPS: tl.constexpr = BLOCK_IN // 32
        g = in_start // 32 + tl.arange(0, GROUPS)
        j = tl.arange(0, 16)
        mask = out_mask[:, None] & (g * 32 < in_features)[None, :]
        raw = tl.load(blocks_ptr + expert * stride_be + out_idx[:, None, None] * stride_bo + g[None, :, None] * 16
                      + j[None, None, :], mask=mask[:, :, None], other=0).to(tl.int32)
        s = tl.load(scales_ptr + expert * stride_se + out_idx[:, None] * stride_so + g[None, :], mask=mask,
                    other=127).to(tl.int32)
        factor = _e8m0(s)[:, :, None]
        return _e2m1(raw & 15) * factor, _e2m1(raw >> 4) * factor

    @triton.jit
    def _dequant_tile(blocks_ptr, scales_ptr, expert, out_idx, out_mask, in_start, in_features,
                      stride_be, stride_bo, stride_se, stride_so, ROWS: tl.constexpr, BLOCK_IN: tl.constexpr):
        """Dequantized tile [len(out_idx), BLOCK_IN] (rows: output features; columns: in_start + 0..BLOCK_IN-1)."""
        lo, hi = _dequant_parts(blocks_ptr, scales_ptr, expert, out_idx, out_mask, in_start, in_features,
                                stride_be, stride_bo, stride_se, stride_so, BLOCK_IN)
        return tl.reshape(tl.join(lo, hi), (ROWS, BLOCK_IN))

    @triton.jit
    def _mxfp4_gemv_kernel(
        x_ptr, blocks_ptr, scales_ptr, y_ptr, row_expert_ptr,
        stride_xm, stride_ym, stride_be, stride_bo, stride_se, stride_so,
        N: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        """Few rows per expert (decode): y[row, cols] = x[row] @ W[e].T, one row per program, no tensor cores.

        A weight tile is [BLOCK_N, BLOCK_G groups, 16 bytes] as stored; the low nibbles multiply x's even
        features and the high nibbles its odd ones, so nothing is interleaved, and each group's scale multiplies
        its partial sum once."""
        row = tl.program_id(0)
        pid_n = tl.program_id(1)
        expert = tl.load(row_expert_ptr + row)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        j = tl.arange(0, 16)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        w_base = blocks_ptr + expert * stride_be + cols[:, None, None] * stride_bo
        s_base = scales_ptr + expert * stride_se + cols[:, None] * stride_so
        x_base = x_ptr + row * stride_xm
        for g0 in range(0, GROUPS, BLOCK_G):
            g = g0 + tl.arange(0, BLOCK_G)
            g_mask = g < GROUPS
            tile_mask = col_mask[:, None] & g_mask[None, :]
            raw = tl.load(w_base + g[None, :, None] * 16 + j[None, None, :], mask=tile_mask[:, :, None],
                          other=0).to(tl.int32)
            x_even = tl.load(x_base + g[:, None] * 32 + 2 * j[None, :], mask=g_mask[:, None], other=0.0)
            x_odd = tl.load(x_base + g[:, None] * 32 + 2 * j[None, :] + 1, mask=g_mask[:, None], other=0.0)
            part = tl.sum(_e2m1(raw & 15) * x_even.to(tl.float32)[None, :, :]
                          + _e2m1(raw >> 4) * x_odd.to(tl.float32)[None, :, :], axis=2)
            s = tl.load(s_base + g[None, :], mask=tile_mask, other=0).to(tl.int32)
            acc += tl.sum(part * _e8m0(s), axis=1)
        tl.store(y_ptr + row * stride_ym + cols, acc.to(y_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit
    def _mxfp4_grouped_kernel(
        x_ptr, blocks_ptr, scales_ptr, y_ptr, block_expert_ptr, block_row_ptr, seg_end_ptr,
        stride_xm, stride_ym, stride_be, stride_bo, stride_se, stride_so,
        N: tl.constexpr, K: tl.constexpr, in_features: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, SWAP: tl.constexpr,
    ):
        """y[rows of a block] = x[rows] @ W[e].T (TRANSPOSE: @ W[e]); W[e] [out, in] dequantized tile by tile.

        SPLIT (not TRANSPOSE): the nibbles are not interleaved into feature order; the low ones multiply x's even
        features and the high ones its odd features, as two products of half the depth.
        SWAP: the product is computed transposed, y.T = W-tile @ x.T, so the dequantized weight (in registers) is
        the MMA's left operand, which Hopper's wgmma reads from registers, and the few rows of a decode-sized
        block are its narrow right side (no round trip of the weight tile through shared memory)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        block_expert = tl.load(block_expert_ptr + pid_m)
        used = block_expert >= 0  # unused blocks (the grid is sized for the worst case) skip the loop
        expert = tl.maximum(block_expert, 0)
        row0 = tl.load(block_row_ptr + pid_m)
        row_end = tl.where(used, tl.load(seg_end_ptr + expert), 0)
        rows = row0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        if SWAP:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if used:
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_mask = ks < K
                if not SPLIT:
                    a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :],
                                mask=row_mask[:, None] & k_mask[None, :], other=0.0)
                if SPLIT:
                    byte = k0 // 2 + tl.arange(0, BLOCK_K // 2)
                    x_rows = x_ptr + rows[:, None] * stride_xm + 2 * byte[None, :]
                    x_mask = row_mask[:, None] & (byte * 2 < K)[None, :]
                    x_even = tl.load(x_rows, mask=x_mask, other=0.0)
                    x_odd = tl.load(x_rows + 1, mask=x_mask, other=0.0)
                    lo, hi = _dequant_parts(blocks_ptr, scales_ptr, expert, cols, col_mask, k0, in_features,
                                            stride_be, stride_bo, stride_se, stride_so, BLOCK_K)
                    lo = tl.reshape(lo, (BLOCK_N, BLOCK_K // 2)).to(x_even.dtype)
                    hi = tl.reshape(hi, (BLOCK_N, BLOCK_K // 2)).to(x_even.dtype)
                    if SWAP:
                        acc += tl.dot(lo, tl.trans(x_even))
                        acc += tl.dot(hi, tl.trans(x_odd))
                    else:
                        acc += tl.dot(x_even, tl.trans(lo))
                        acc += tl.dot(x_odd, tl.trans(hi))
                elif TRANSPOSE:  # K = out features, N = in features
                    w = _dequant_tile(blocks_ptr, scales_ptr, expert, ks, k_mask, pid_n * BLOCK_N, in_features,
                                      stride_be, stride_bo, stride_se, stride_so, BLOCK_K, BLOCK_N).to(a.dtype)
                    if SWAP:
                        acc += tl.dot(tl.trans(w), tl.trans(a))
                    else:
                        acc += tl.dot(a, w)
                else:  # K = in features, N = out features
                    w = _dequant_tile(blocks_ptr, scales_ptr, expert, cols, col_mask, k0, in_features,
                                      stride_be, stride_bo, stride_se, stride_so, BLOCK_N, BLOCK_K).to(a.dtype)
                    if SWAP:
                        acc += tl.dot(w, tl.trans(a))
                    else:
                        acc += tl.dot(a, tl.trans(w))
        if SWAP:  # acc is [cols, rows]
            tl.store(y_ptr + rows[None, :] * stride_ym + cols[:, None], acc.to(y_ptr.dtype.element_ty),
                     mask=row_mask[None, :] & col_mask[:, None])
        else:
            tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=row_mask[:, None] & col_mask[None, :])


def _block_layout(offs: torch.Tensor, rows: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per row block of the expert-sorted rows: its expert (-1: unused) and first row. Device ops only (no sync):
    the grid is sized for the worst case, cdiv(rows, block_m) + E blocks."""
    num_experts = offs.shape[0]
    offs = offs.long()
    starts = torch.cat([offs.new_zeros(1), offs[:-1]])
    per = (offs - starts + block_m - 1) // block_m
    block_end = torch.cumsum(per, 0)
    max_blocks = (rows + block_m - 1) // block_m + num_experts
    b = torch.arange(max_blocks, device=offs.device)
    expert = torch.searchsorted(block_end, b, right=True)
    valid = expert < num_experts
    e = expert.clamp(max=num_experts - 1)
    row0 = starts[e] + (b - (block_end[e] - per[e])) * block_m
    return torch.where(valid, expert, -1).to(torch.int32), row0.to(torch.int32), max_blocks


def _triton_ok(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


# Tiles of the CUDA kernels (scripts/bench_mxfp4.py's kernel phase sweeps them on the GPU): products of at most
# GEMV_MAX_ROWS rows (decode) take the one-row kernel, larger ones the tensor-core kernel, with the small or large
# tile (block_m, block_n, block_k, warps, split, swap: see the kernel) by rows per expert.
GEMV_MAX_ROWS = 32
GEMV_TILE = {"block_n": 16, "block_g": 8, "num_warps": 2}
DOT_TILES = {"small": (16, 128, 64, 4, False, True), "large": (64, 128, 64, 4, False, True)}


def row_experts(offs: torch.Tensor, rows: int) -> torch.Tensor:
    """The expert of each of `rows` expert-sorted rows (group e ends at offs[e]); device ops only."""
    index = torch.arange(rows, device=offs.device, dtype=offs.dtype)
    return torch.searchsorted(offs, index, right=True).clamp(max=offs.shape[0] - 1)


def _mxfp4_mm_triton(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, offs: torch.Tensor,
                     transpose: bool, row_expert: torch.Tensor | None = None) -> torch.Tensor:
    num_experts, out_features, groups, _ = blocks.shape
    in_features = groups * BLOCK
    n, k = (in_features, out_features) if transpose else (out_features, in_features)
    x = x.contiguous()
    rows = x.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    if rows == 0:
        return y
    if not transpose and rows <= GEMV_MAX_ROWS:
        row_expert = row_experts(offs, rows) if row_expert is None else row_expert  # any integer dtype
        tile = GEMV_TILE
        _mxfp4_gemv_kernel[(rows, triton.cdiv(n, tile["block_n"]))](
            x, blocks, scales, y, row_expert,
            x.stride(0), y.stride(0), blocks.stride(0), blocks.stride(1), scales.stride(0), scales.stride(1),
            N=n, GROUPS=groups, BLOCK_N=tile["block_n"], BLOCK_G=tile["block_g"], num_warps=tile["num_warps"],
        )
        return y
    small = rows <= 4 * num_experts * 4  # a few rows per expert
    block_m, block_n, block_k, warps, split, swap = DOT_TILES["small" if small else "large"]
    block_expert, block_row, max_blocks = _block_layout(offs, rows, block_m)
    grid = (max_blocks, triton.cdiv(n, block_n))
    _mxfp4_grouped_kernel[grid](
        x, blocks, scales, y, block_expert, block_row, offs.to(torch.int32),
        x.stride(0), y.stride(0), blocks.stride(0), blocks.stride(1), scales.stride(0), scales.stride(1),
        N=n, K=k, in_features=in_features, TRANSPOSE=transpose, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        SPLIT=split and not transpose, SWAP=swap, num_warps=warps,
    )
    return y


def _mxfp4_mm_torch(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, offs: torch.Tensor,
                    transpose: bool) -> torch.Tensor:
    """Reference path (any device): one routed expert dequantized at a time (host sync on the group sizes)."""
    out_features, in_features = blocks.shape[1], blocks.shape[2] * BLOCK
    n = in_features if transpose else out_features
    y = x.new_zeros(x.shape[0], n)
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            w = dequantize_mxfp4(blocks[e], scales[e], x.dtype)  # [out, in]
            y[start:end] = x[start:end] @ (w if transpose else w.T)
        start = end
    return y


@torch.library.custom_op("ossgym::mxfp4_grouped_mm", mutates_args=())
def mxfp4_grouped_mm(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, offs: torch.Tensor,
                     transpose: bool = False, row_expert: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of x sorted by expert (group e ends at offs[e]) times each group's MXFP4 weight: x @ W[e]^T, or
    x @ W[e] when transpose (W[e] is [out, in] as stored). `row_expert`: each row's expert, when the caller
    has it (the experts pass sorts by it), so the decode kernel need not search offs again."""
    if _triton_ok(x):
        return _mxfp4_mm_triton(x, blocks, scales, offs, transpose, row_expert)
    return _mxfp4_mm_torch(x, blocks, scales, offs, transpose)


@mxfp4_grouped_mm.register_fake
def _(x, blocks, scales, offs, transpose=False, row_expert=None):
    n = blocks.shape[2] * BLOCK if transpose else blocks.shape[1]
    return x.new_empty(x.shape[0], n)


def _setup_context(ctx, inputs, output) -> None:
    _, blocks, scales, offs, transpose, _ = inputs
    ctx.save_for_backward(blocks, scales, offs)
    ctx.transpose = transpose


def _backward(ctx, grad):
    blocks, scales, offs = ctx.saved_tensors
    return mxfp4_grouped_mm(grad, blocks, scales, offs, not ctx.transpose), None, None, None, None, None


mxfp4_grouped_mm.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------- the seam
def _dense_grouped(x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x sorted by expert @ weight[e] ([E, in, out]); grouped_mm on CUDA bf16 (which needs 16-byte rows: in and
    out multiples of 8, so not a LoRA rank of 4), else a loop (host sync)."""
    if (_grouped_mm is not None and x.is_cuda and x.dtype == torch.bfloat16 and weight.shape[-1] % 8 == 0
            and weight.shape[-2] % 8 == 0):
        return _grouped_mm(x, weight, offs=offs)
    parts, start = [], 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            parts.append(x[start:end] @ weight[e])
        start = end
    if not parts:
        return x.new_zeros(0, weight.shape[-1])
    return torch.cat(parts)


def grouped_linear(x: torch.Tensor, weight: ExpertWeight, offs: torch.Tensor,
                   lora: LoraFactors | tuple[LoraFactors, ...] | None = None,
                   row_expert: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, in] sorted by expert (group e ends at offs[e], int32) -> [M, out]: x @ W[e] (+ split LoRA).
    `row_expert` [M]: each row's expert, if the caller has it (else found from offs where needed)."""
    if isinstance(weight, Mxfp4):
        y = mxfp4_grouped_mm(x, weight.blocks, weight.scales, offs, False, row_expert)
    else:
        y = _dense_grouped(x, weight, offs)
    if lora is None:
        return y
    for factors in (lora,) if isinstance(lora, LoraFactors) else lora:
        if lora_rows.usable(x, y, factors.a, factors.b):  # decode without autograd: two launches
            e = row_experts(offs, x.shape[0]) if row_expert is None else row_expert
            y = lora_rows.lora_rows(x, [y], [factors.a], [factors.b], [float(factors.scaling)], e)[0]
        else:
            y = y + _lora_delta(x, factors.a, factors.b, offs, row_expert) * factors.scaling
    return y


def _lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor,
                row_expert: torch.Tensor | None = None) -> torch.Tensor:
    """(x @ a[e]) @ b[e] per row. A few rows (decode): each row's factors gathered and two batched products,
    cheaper than a grouped GEMM's per-group setup over every expert; more rows: two grouped products."""
    if x.shape[0] <= GEMV_MAX_ROWS:
        e = row_experts(offs, x.shape[0]) if row_expert is None else row_expert
        return torch.bmm(torch.bmm(x[:, None], a[e].to(x.dtype)), b[e].to(x.dtype))[:, 0]
    a, b = a.to(x.dtype).contiguous(), b.to(x.dtype).contiguous()  # peft's factors are views (peft_utils)
    return _dense_grouped(_dense_grouped(x, a, offs), b, offs)


def clamped_swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss activation: interleaved gate/up, gate clamped above, up clamped both sides, (up + 1) * gate * sigmoid(alpha * gate)."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def experts_forward(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: ExpertWeight,
    gate_up_bias: torch.Tensor,
    down: ExpertWeight,
    down_bias: torch.Tensor,
    alpha: float,
    limit: float,
    gate_up_lora: LoraFactors | tuple[LoraFactors, ...] | None = None,
    down_lora: LoraFactors | tuple[LoraFactors, ...] | None = None,
    chunk_tokens: int | None = EXPERT_CHUNK_TOKENS,
) -> torch.Tensor:
    """The experts of one layer on tokens x [N, H] routed to `index` [N, k] with `weights` [N, k].

    Token-expert pairs are sorted by expert and run as two grouped products (no host sync on CUDA, so CUDA
    graphs capture it); differentiable in x, the routing weights and the LoRA factors (and in dense weights).

    More than `chunk_tokens` tokens run `chunk_tokens` at a time (tokens are independent: the same result).
    With autograd on, each chunk is checkpointed, so the per-routed-row activations (gathered inputs, the
    gate_up output, the SwiGLU temporaries, the fp32 weighted rows: together ~20x the chunk's hidden states)
    exist for one chunk at a time, in the forward and in the backward, which recomputes them chunk by chunk.
    That bounds what a long sequence's layer costs under activation checkpointing at the price of one more
    experts forward in the backward. ``None``: one pass over all tokens.
    """
    args = (gate_up, gate_up_bias, down, down_bias, alpha, limit, gate_up_lora, down_lora)
    if chunk_tokens is None or x.shape[0] <= chunk_tokens:
        return _experts_pass(x, weights, index, *args)
    if chunk_tokens < 1:
        raise ConfigError("chunk_tokens", f"must be at least 1 (or None), got {chunk_tokens}",
                          f"Pass chunk_tokens={EXPERT_CHUNK_TOKENS}.")
    parts = []
    for start in range(0, x.shape[0], chunk_tokens):
        piece = (x[start:start + chunk_tokens], weights[start:start + chunk_tokens], index[start:start + chunk_tokens])
        if torch.is_grad_enabled():
            parts.append(checkpoint(_experts_pass, *piece, *args, use_reentrant=False))
        else:
            parts.append(_experts_pass(*piece, *args))
    return torch.cat(parts)


def _experts_pass(x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, gate_up: ExpertWeight,
                  gate_up_bias: torch.Tensor, down: ExpertWeight, down_bias: torch.Tensor, alpha: float, limit: float,
                  gate_up_lora, down_lora) -> torch.Tensor:
    """`experts_forward` over all of x in one pass."""
    num_experts = gate_up_bias.shape[0]
    top_k = index.shape[1]
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    expert_sorted = flat[order]
    token = order // top_k
    counts = torch.bincount(flat, minlength=num_experts) if not x.is_cuda else (
        (expert_sorted[:, None] == torch.arange(num_experts, device=x.device)).sum(0))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    h = grouped_linear(x[token], gate_up, offs, gate_up_lora, expert_sorted) + gate_up_bias[expert_sorted].to(x.dtype)
    h = clamped_swiglu(h, alpha, limit)
    y = grouped_linear(h.contiguous(), down, offs, down_lora, expert_sorted) + down_bias[expert_sorted].to(x.dtype)
    y = y.float() * weights.reshape(-1)[order, None].float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add(0, token, y)
    return out.to(x.dtype)


def expert_weight_bytes(weight: ExpertWeight) -> int:
    """Bytes held by an expert weight (blocks + scales for MXFP4)."""
    if isinstance(weight, Mxfp4):
        return weight.blocks.numel() + weight.scales.numel()
    return weight.numel() * weight.element_size()


__all__ = [
    "BLOCK", "EXPERT_CHUNK_TOKENS", "ExpertWeight", "FP4_VALUES", "LoraFactors", "Mxfp4", "clamped_swiglu", "dequantize_mxfp4",
    "expert_weight_bytes", "experts_forward", "grouped_linear", "mxfp4_grouped_mm", "quantize_experts",
    "quantize_mxfp4",
]
