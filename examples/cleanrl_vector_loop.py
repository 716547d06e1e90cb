"""A CleanRL-style PPO loop, top to bottom, on Game2048-v0's native vector env (``gymnasium.make_vec``).

    python examples/cleanrl_vector_loop.py --num-envs 64 --total-timesteps 500000

Every board is stepped at once by the batched bitboard engine; illegal moves are masked out of the policy
with ``info["action_mask"]``. Needs torch (``ossgym[train]``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from torch import nn

import ossgym  # noqa: F401  (registers Game2048-v0)


@dataclass
class Args:
    num_envs: int = 64  # boards stepped together
    num_steps: int = 64  # rollout length per env
    total_timesteps: int = 500_000
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    seed: int = 0


class Agent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.pi, self.v = nn.Linear(256, 4), nn.Linear(256, 1)

    def value(self, x):
        return self.v(self.body(x)).squeeze(-1)

    def act(self, x, mask, action=None):
        h = self.body(x)
        logits = self.pi(h).masked_fill(~mask, -1e9)  # legal moves only
        dist = torch.distributions.Categorical(logits=logits)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.v(h).squeeze(-1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(Args()).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = Args(**vars(ap.parse_args(argv)))
    torch.manual_seed(args.seed)

    envs = gymnasium.make_vec("Game2048-v0", num_envs=args.num_envs, one_hot=True, reward_mode="log2",
                              max_episode_steps=5000)
    agent = Agent()
    opt = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    N, T = args.num_envs, args.num_steps
    obs_buf = torch.zeros((T, N, 4, 4, 16))
    mask_buf = torch.zeros((T, N, 4), dtype=torch.bool)
    act_buf, logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((T, N)) for _ in range(5))

    obs, info = envs.reset(seed=args.seed)
    next_obs, next_mask = torch.tensor(obs, dtype=torch.float32), torch.tensor(info["action_mask"])
    next_done = torch.zeros(N)
    finished: list[int] = []
    for update in range(max(1, args.total_timesteps // (N * T))):
        for t in range(T):  # rollout
            obs_buf[t], mask_buf[t], done_buf[t] = next_obs, next_mask, next_done
            with torch.no_grad():
                action, logp, _, value = agent.act(next_obs, next_mask)
            act_buf[t], logp_buf[t], val_buf[t] = action, logp, value
            obs, reward, term, trunc, info = envs.step(action.numpy())
            done = term | trunc
            finished += info["score"][done].tolist()
            rew_buf[t] = torch.tensor(reward, dtype=torch.float32)
            next_obs, next_mask = torch.tensor(obs, dtype=torch.float32), torch.tensor(info["action_mask"])
            next_done = torch.tensor(done, dtype=torch.float32)
            # next-step autoreset: the step after `done` starts a new game and its reward is 0
        with torch.no_grad():  # generalized advantage estimation
            next_value = agent.value(next_obs)
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(N)
            for t in reversed(range(T)):
                nv = next_value if t == T - 1 else val_buf[t + 1]
                nd = next_done if t == T - 1 else done_buf[t + 1]
                delta = rew_buf[t] + args.gamma * nv * (1 - nd) - val_buf[t]
                last = delta + args.gamma * args.gae_lambda * (1 - nd) * last
                adv[t] = last
            ret = adv + val_buf
        b = {"obs": obs_buf.reshape(-1, 4, 4, 16), "mask": mask_buf.reshape(-1, 4), "act": act_buf.reshape(-1),
             "logp": logp_buf.reshape(-1), "adv": adv.reshape(-1), "ret": ret.reshape(-1)}
        idx = np.arange(N * T)
        mb = N * T // args.num_minibatches
        for _ in range(args.update_epochs):  # PPO update
            np.random.default_rng(update).shuffle(idx)
            for start in range(0, N * T, mb):
                j = torch.as_tensor(idx[start:start + mb])
                _, logp, ent, v = agent.act(b["obs"][j], b["mask"][j], b["act"][j].long())
                ratio = (logp - b["logp"][j]).exp()
                a = b["adv"][j]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                loss = pg - args.ent_coef * ent.mean() + args.vf_coef * ((v - b["ret"][j]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                opt.step()
        if finished:
            print(f"update {update}: {len(finished)} games so far, mean score of the last 20 "
                  f"{np.mean(finished[-20:]):.0f}")
    envs.close()
    return {"finished_scores": finished, "agent": agent}


if __name__ == "__main__":
    main()
