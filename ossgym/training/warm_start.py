"""A short supervised warm start of the agent's model on fixed (prompt, completion) pairs, before GRPO.

A random tiny model never writes a ``strategy`` block, so every completion of a group gets the same reward
and GRPO has nothing to compare. Fitting the model to a handful of completions of different quality (a
working strategy, a weaker one, a policy violation, a syntax error, no code) makes it sample among them;
GRPO then has to learn which of them pays. This is supervised training on hand-written text, not learning
from reward: runs that use it say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ossgym.agents.agent import GptOssAgent, Prompt
from ossgym.agents.peft_utils import base_model

logger = logging.getLogger(__name__)

_FINAL = "<|channel|>final<|message|>"

#: Completions for GptOss2048-v0 of decreasing reward (about 2.2, 1.2, -0.5, -0.5, -1.0 with the defaults): a random
#: mover (unfenced: the env takes a whole answer that defines ``strategy``), always "W", a policy violation, a
#: syntax error, no code. The best one parts from the others at its first token, so choosing it is one decision;
#: when it shared ``def strategy(board):\n`` with the rest and parted only at ``import`` vs ``return``, GRPO's
#: updates of that late choice also moved the same tokens elsewhere and scrambled the completions.
STRATEGY_2048_COMPLETIONS: tuple[str, ...] = (
    _FINAL + 'import random\ndef strategy(board):\n    return random.choice("WASD")<|return|>',
    _FINAL + '```python\ndef strategy(board):\n    return "W"\n```<|return|>',
    _FINAL + '```python\nimport os\ndef strategy(board):\n    return "W"\n```<|return|>',
    _FINAL + '```python\ndef strategy(board)\n    return "W"\n```<|return|>',
    _FINAL + "I cannot write that.<|return|>",
)


def completion_probabilities(agent: GptOssAgent, prompt: Prompt, completions: Sequence[str]) -> list[float]:
    """The probability the agent's model (with its adapter, if any) gives each completion after ``prompt``.

    Exact (teacher-forced, temperature 1), not sampled: a learning check that reads it does not depend on
    which completions a few samples happened to draw.
    """
    model, tokenizer = agent.model, agent.tokenizer
    prompt_ids = agent.encode_prompt(prompt)
    base = base_model(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for text in completions:
                ids = tokenizer.encode(text, add_special_tokens=False)
                seq = torch.tensor([prompt_ids + ids], device=agent.device)
                hidden = base.model(input_ids=seq).last_hidden_state[0, len(prompt_ids) - 1 : -1]
                logp = base.lm_head(hidden).float().log_softmax(-1)
                out.append(float(logp.gather(1, torch.tensor(ids, device=agent.device)[:, None]).sum().exp()))
    finally:
        model.train(was_training)
    return out


def supervised_warm_start(
    agent: GptOssAgent,
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    steps: int = 150,
    learning_rate: float = 2e-2,
) -> list[float]:
    """Fit the agent's model to every (prompt, completion) pair (cross-entropy on completion tokens); return the losses.

    Every prompt is paired with every completion, equally weighted, so where completions share a prefix the
    model learns to choose among them. Only the LM head rows of the tokens the completions use train, on
    features of one forward pass (cheap on CPU); GRPO's LoRA on the attention then moves the choice.
    """
    from ossgym.errors import ConfigError

    if steps < 1:
        raise ConfigError("steps", f"must be >= 1, got {steps}", "Pass steps=30, for example.")
    if not prompts or not completions:
        raise ConfigError("completions", "no prompt or no completion given", "Pass at least one of each.")
    model, tokenizer = agent.model, agent.tokenizer
    if getattr(base_model(model).lm_head.weight, "quant_state", None) is not None:
        raise ConfigError("nf4", "includes lm_head, whose 4-bit weight is frozen: the warm start trains LM-head rows",
                          "Run the warm start before quantizing the head, or leave lm_head out of nf4.")
    pairs = []
    for prompt in prompts:
        prompt_ids = agent.encode_prompt(prompt)
        for text in completions:
            pairs.append((prompt_ids, tokenizer.encode(text, add_special_tokens=False)))
    width = max(len(p) + len(c) for p, c in pairs)
    device = agent.device
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    targets = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (p, c) in enumerate(pairs):
        seq = p + c
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        targets[row, len(p) - 1 : len(seq) - 1] = torch.tensor(c)  # position t predicts token t + 1
    ids, mask, targets = ids.to(device), mask.to(device), targets.to(device)
    keep = targets != -100
    base = base_model(model)
    with torch.no_grad():  # the body is fixed: one forward gives the features the head is fitted on
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]
        head = base.lm_head.weight
        labels = targets[keep]
        rows = torch.unique(labels)  # only the rows of tokens the completions use are trained
        logits = (hidden @ head.t()).float()
        fixed = logits.index_fill(1, rows, -torch.inf).logsumexp(-1)  # normaliser part of the untrained rows
        trained = logits[:, rows]
        label_cols = torch.searchsorted(rows, labels)[:, None]
        del logits
    delta = torch.zeros((len(rows), head.shape[1]), dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=learning_rate)
    losses = []
    for _ in range(steps):
        z = trained + hidden.float() @ delta.t()
        loss = (torch.logaddexp(fixed, z.logsumexp(-1)) - z.gather(1, label_cols).squeeze(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        head[rows] += delta.to(head.dtype)
    model.eval()
    logger.info("supervised warm start: %d steps, loss %.3f -> %.3f", steps, losses[0], losses[-1])
    return losses
