"""The fused decode LoRA (weights.lora_add / lora_rows): the same sum as two products, for split expert LoRA and
for peft's LoRA layers on the attention projections (engine.project), and only where that sum is peft's forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ossgym.agents.gptoss import weights as W
from ossgym.agents.gptoss.engine import project
from ossgym.agents.peft_utils import linear_lora_factors

peft = pytest.importorskip("peft")


def offsets(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.cumsum(torch.bincount(expert, minlength=num_experts), 0).to(torch.int32)


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_lora_add_equals_two_products_per_expert(rows):
    g = torch.Generator().manual_seed(rows)
    num_experts, k, n, r = 4, 48, 40, 8
    expert = torch.sort(torch.randint(0, num_experts, (rows,), generator=g)).values
    offs = offsets(expert, num_experts)
    x, y = torch.randn(rows, k, generator=g), torch.randn(rows, n, generator=g)
    factors = W.LoraFactors(torch.randn(num_experts, k, r, generator=g), torch.randn(num_experts, r, n, generator=g),
                            0.25)
    want = y.clone()
    for m in range(rows):
        want[m] += 0.25 * (x[m] @ factors.a[expert[m]]) @ factors.b[expert[m]]
    with torch.no_grad():
        for row_expert in (None, expert):  # found from offs, or handed down by the experts pass
            got = W.lora_add(y, x, factors, offs, row_expert)
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    # with autograd (training) the differentiable products give the same sum
    a = factors.a.clone().requires_grad_()
    got = W.lora_add(y, x, W.LoraFactors(a, factors.b, 0.25), offs)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_decode_sized_lora_without_grad_is_one_fused_op(monkeypatch):
    calls = []
    real = W.lora_rows

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(W, "lora_rows", counting)
    x, y = torch.randn(3, 16), torch.randn(3, 24)
    factors = W.LoraFactors(torch.randn(1, 16, 4), torch.randn(1, 4, 24), 2.0)
    with torch.no_grad():
        W.lora_add(y, x, factors)
    assert calls == [torch.Size([3, 24])]
    with torch.no_grad():  # above the decode rows: the products
        W.lora_add(torch.randn(W.GEMV_MAX_ROWS + 1, 24), torch.randn(W.GEMV_MAX_ROWS + 1, 16), factors)
    W.lora_add(y, x.requires_grad_(), factors)  # autograd on: the products
    assert len(calls) == 1


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 24)


def wrapped(seed: int, **config) -> nn.Module:
    torch.manual_seed(seed)
    model = peft.get_peft_model(Block(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"],
                                                         init_lora_weights=False, **config))
    return model.eval()


def test_project_equals_the_peft_layer_on_plain_lora():
    model = wrapped(0)
    layer = model.base_model.model.proj
    assert linear_lora_factors(layer) is not None
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        assert torch.allclose(project(layer, x), layer(x), atol=1e-5, rtol=1e-5)
        assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-2  # the adapter matters
        model.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights=False))
        model.base_model.set_adapter(["default", "second"])  # two active adapters: both added
        assert len(linear_lora_factors(layer)[1]) == 2
        assert torch.allclose(project(layer, x), layer(x), atol=1e-5, rtol=1e-5)
        with model.disable_adapter():
            assert linear_lora_factors(layer) is None
            assert torch.allclose(project(layer, x), layer.base_layer(x))


@pytest.mark.parametrize("config", [{"use_dora": True}, {"lora_bias": True}])
def test_project_leaves_other_lora_forms_to_peft(config):
    layer = wrapped(1, **config).base_model.model.proj
    assert linear_lora_factors(layer) is None
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        assert torch.allclose(project(layer, x), layer(x))


def test_merged_or_dropout_in_training_is_left_to_peft():
    model = wrapped(2, lora_dropout=0.5)
    layer = model.base_model.model.proj
    assert linear_lora_factors(layer) is not None  # eval: dropout is off
    model.train()
    assert linear_lora_factors(layer) is None
    model.eval()
    layer.merge()
    assert linear_lora_factors(layer) is None
    assert linear_lora_factors(nn.Linear(4, 4)) is None
