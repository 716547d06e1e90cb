"""flex_sinks against eager on the tiny gpt-oss (CPU, fp32): logits and every gradient, sinks included."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ossgym.agents.gptoss import flex_sinks  # noqa: E402
from ossgym.agents.gptoss.tiny import tiny_model  # noqa: E402


def _batch(seq: int = 300, pad: tuple[int, ...] = (0, 57, 170)):
    """Rows left-padded by `pad` tokens; seq 300 crosses the tiny model's 128-token sliding window."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (len(pad), seq), generator=g)
    mask = torch.ones(len(pad), seq, dtype=torch.long)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
    return ids, mask


def _run(impl: str, ids, mask):
    flex_sinks.register()
    model = tiny_model()
    model.train()
    model.config.attention_dropout = 0.0
    model.set_attn_implementation(impl)
    # make the sinks matter: some large, some small
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-3, 3, layer.self_attn.sinks.numel()))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids)
    logits = out.logits
    # a loss over real tokens only, weighted so every logit gets a distinct gradient
    w = torch.randn(logits.shape[-1], generator=torch.Generator().manual_seed(2))
    loss = ((logits * w).sum(-1) * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def test_flex_sinks_matches_eager_logits_and_grads():
    ids, mask = _batch()
    logits_e, grads_e = _run("eager", ids, mask)
    logits_f, grads_f = _run(flex_sinks.NAME, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(logits_f[real], logits_e[real], atol=1e-4, rtol=1e-4)
    assert set(grads_f) == set(grads_e)
    assert any(n.endswith("sinks") for n in grads_e)
    for name in grads_e:
        scale = grads_e[name].abs().max().clamp(min=1.0)
        torch.testing.assert_close(grads_f[name] / scale, grads_e[name] / scale, atol=1e-4, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_sinks_mask_blocks_cover_dense_mask():
    """The block-sparse mask's blocks (full + partial) cover every visible pair; full blocks hold only visible ones."""
    pad = torch.ones(2, 700, dtype=torch.bool)
    pad[1, :300] = False
    for window in (None, 128, 200):
        m = flex_sinks.SinksMask(2, 700, 700, window=window, padding=pad)
        bm = flex_sinks.block_mask(m, torch.device("cpu"))
        dense = m.dense(0, 700, torch.device("cpu"))[:, 0]
        nb = (700 + 127) // 128
        for b in range(2):
            for qb in range(nb):
                rows = dense[b, qb * 128:(qb + 1) * 128]
                full = set(bm.full_kv_indices[b, 0, qb, :bm.full_kv_num_blocks[b, 0, qb]].tolist())
                part = set(bm.kv_indices[b, 0, qb, :bm.kv_num_blocks[b, 0, qb]].tolist())
                assert not full & part
                for kb in range(nb):
                    blk = rows[:, kb * 128:(kb + 1) * 128]
                    if kb in full:
                        assert blk.all()
                    elif kb not in part:
                        assert not blk.any()


def test_register_is_idempotent_and_named():
    from transformers import AttentionInterface

    flex_sinks.register()
    flex_sinks.register()
    assert flex_sinks.NAME in AttentionInterface._global_mapping
