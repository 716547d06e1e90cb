"""LoRA on a few rows without autograd (lora_rows.py): the op's sum, where the engine and the experts seam use it
(engine.project for peft's attention LoRA, weights.grouped_linear for split expert LoRA), and where they must not.

On the CPU the op computes its sum in torch; the tests that follow the engine's path patch ``on_triton`` so the
decode takes the op where a GPU would. The Triton launches themselves are checked against the fp32 sum by
scripts/bench_lora_decode.py on the GPU (and were checked in Triton's interpreter).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ossgym.agents.gptoss import lora_rows as L
from ossgym.agents.gptoss import weights as W
from ossgym.agents.gptoss.engine import FastGptOss, project
from ossgym.agents.peft_utils import linear_lora_factors

peft = pytest.importorskip("peft")


@pytest.fixture
def on_triton(monkeypatch):
    """The op is taken wherever a GPU would take it, and its calls are counted (the slots of each)."""
    calls: list[int] = []
    real = L.lora_rows

    def counting(x, ys, *args):
        calls.append(len(ys))
        return real(x, ys, *args)

    monkeypatch.setattr(L, "on_triton", lambda x: True)
    monkeypatch.setattr(L, "lora_rows", counting)
    return calls


def per_row(x, y, a, b, scaling, expert):
    want = y.double().clone()
    for m in range(x.shape[0]):
        want[m] += scaling * (x[m].double() @ a[expert[m]].double()) @ b[expert[m]].double()
    return want


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_op_adds_each_rows_adapter_for_up_to_three_slots(rows):
    g = torch.Generator().manual_seed(rows)
    experts, k, outs, r = 3, 24, (16, 8, 40), 5
    x = torch.randn(rows, k, generator=g)
    expert = torch.sort(torch.randint(0, experts, (rows,), generator=g)).values
    a = [torch.randn(experts, k, r, generator=g) for _ in outs]
    b = [torch.randn(experts, r, n, generator=g) for n in outs]
    ys = [torch.randn(rows, n, generator=g) for n in outs]
    got = L.lora_rows(x, ys, a, b, [0.5, 1.0, 2.0], expert)
    for y, a_s, b_s, s, out in zip(ys, a, b, [0.5, 1.0, 2.0], got):
        assert out.shape == y.shape and out.dtype == y.dtype
        assert torch.allclose(out.double(), per_row(x, y, a_s, b_s, s, expert), atol=1e-5)
    with pytest.raises(ValueError, match="1 to 3 adapters"):
        L.lora_rows(x, ys + ys[:1], a + a[:1], b + b[:1], [1.0] * 4, expert)


def test_usable_only_without_gradients_and_at_decode_rows(monkeypatch):
    x, a = torch.randn(4, 8), torch.randn(1, 8, 2, requires_grad=True)
    assert not L.usable(x, a)  # the CPU: the products
    monkeypatch.setattr(L, "on_triton", lambda x: True)
    with torch.no_grad():
        assert L.usable(x, a)
        assert not L.usable(torch.randn(L.LORA_ROWS_MAX + 1, 8), a)  # prefill and training sizes: the products
    assert not L.usable(x, a)  # a gradient is wanted through the factor
    assert L.usable(x, a.detach())


def offsets(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.cumsum(torch.bincount(expert, minlength=num_experts), 0).to(torch.int32)


def test_split_expert_lora_takes_the_op_at_decode_and_the_products_with_autograd(on_triton):
    g = torch.Generator().manual_seed(0)
    num_experts, k, n, r, rows = 4, 32, 24, 8, 6
    expert = torch.sort(torch.randint(0, num_experts, (rows,), generator=g)).values
    offs = offsets(expert, num_experts)
    x = torch.randn(rows, k, generator=g)
    weight = torch.randn(num_experts, k, n, generator=g)
    lora = W.LoraFactors(torch.randn(num_experts, k, r, generator=g), torch.randn(num_experts, r, n, generator=g),
                         0.25)
    base = W.grouped_linear(x, weight, offs)
    want = per_row(x, base, lora.a, lora.b, 0.25, expert)
    with torch.no_grad():
        for row_expert in (None, expert):  # found from offs, or handed down by the experts pass
            assert torch.allclose(W.grouped_linear(x, weight, offs, lora, row_expert).double(), want, atol=1e-4)
    assert on_triton == [1, 1]
    a = lora.a.clone().requires_grad_()
    got = W.grouped_linear(x, weight, offs, W.LoraFactors(a, lora.b, 0.25))  # training: differentiable products
    assert on_triton == [1, 1]
    assert torch.allclose(got.double(), want, atol=1e-4)
    got.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(16, 24), nn.Linear(16, 8), nn.Linear(16, 8)
        self.o_proj = nn.Linear(24, 16)


def wrapped(seed: int, targets=("q_proj", "k_proj", "v_proj"), **config) -> nn.Module:
    torch.manual_seed(seed)
    model = peft.get_peft_model(Attention(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                             init_lora_weights=False, **config))
    return model.eval()


def qkv(model):
    inner = model.base_model.model
    return inner.q_proj, inner.k_proj, inner.v_proj


@torch.no_grad()
def test_project_runs_q_k_v_adapters_in_one_op_call_with_peft_sum(on_triton):
    model = wrapped(0)
    x = torch.randn(3, 1, 16)
    got = project(qkv(model), x)
    assert on_triton == [3]  # q, k and v together
    for module, y in zip(qkv(model), got):
        assert y.shape == module(x).shape
        assert torch.allclose(y, module(x), atol=1e-5)
        assert (module(x) - module.base_layer(x)).abs().max() > 1e-2  # the adapter matters
    # a second active adapter on every projection: one more call, the sum of both
    model.add_adapter("second", peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"],
                                                init_lora_weights=False))
    model.base_model.set_adapter(["default", "second"])
    on_triton.clear()
    for module, y in zip(qkv(model), project(qkv(model), x)):
        assert torch.allclose(y, module(x), atol=1e-5)
    assert on_triton == [3, 3]


@torch.no_grad()
def test_project_mixes_plain_modules_and_ranks(on_triton):
    model = wrapped(1, targets=("q_proj", "v_proj"), rank_pattern={"v_proj": 2})  # k has no LoRA; v another rank
    x = torch.randn(2, 1, 16)
    for module, y in zip(qkv(model), project(qkv(model), x)):
        assert torch.allclose(y, module(x), atol=1e-5)
    assert sorted(on_triton) == [1, 1]  # q's and v's ranks differ: a call each; k runs itself


@pytest.mark.parametrize("config", [{"use_dora": True}, {"lora_bias": True}])
@torch.no_grad()
def test_project_leaves_other_lora_forms_to_peft(on_triton, config):
    model = wrapped(2, **config)
    assert all(linear_lora_factors(m) is None for m in qkv(model))
    x = torch.randn(2, 1, 16)
    for module, y in zip(qkv(model), project(qkv(model), x)):
        assert torch.allclose(y, module(x))
    assert on_triton == []


@torch.no_grad()
def test_disabled_merged_or_dropout_in_training_is_left_to_peft(on_triton):
    model = wrapped(3, lora_dropout=0.5)
    q = qkv(model)[0]
    assert linear_lora_factors(q) is not None  # eval: dropout is off
    with model.disable_adapter():
        assert linear_lora_factors(q) is None
        x = torch.randn(2, 1, 16)
        assert torch.allclose(project((q,), x)[0], q.base_layer(x))
    model.train()
    assert linear_lora_factors(q) is None
    model.eval()
    q.merge()
    assert linear_lora_factors(q) is None
    assert linear_lora_factors(nn.Linear(4, 4)) is None
    assert on_triton == []


def test_engine_decode_through_the_op_equals_peft(on_triton):
    """The engine on peft attention LoRA and peft expert LoRA (target_parameters), with the op taken where a GPU
    takes it: prefill and decode logits equal the peft model's forward."""
    from tests.test_fast_engine import assert_engine_matches, prompts, tiny_model, with_expert_lora

    model = with_expert_lora(tiny_model(window=16, seed=5), ["q_proj", "k_proj", "v_proj", "o_proj"])
    engine = FastGptOss(model, max_batch_size=2, max_seq_len=40)
    assert_engine_matches(engine, model, prompts([12, 20], seed=15), prompts([5, 5], seed=16))
    assert 3 in on_triton and 1 in on_triton  # q/k/v together, o and the experts alone
