"""A custom RL loop with two models: an actor and a critic, each with its own optimizer (CartPole-v1).

Advantage actor-critic (A2C) with n-step returns over a vector of environments. The actor and the
critic are separate modules set up separately with fabric, so each has its own optimizer, learning
rate and gradient clipping; the critic is trained first, then the actor on the critic's advantages:

    python examples/rl/actor_critic.py                    # about a minute on a CPU
    python examples/rl/actor_critic.py --devices 2        # DDP: each process its own environments

Prints the mean return of the last 20 episodes every few updates; logs to OUT/logs/metrics.csv.
Needs `pip install gymnasium` (or `.[examples]`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from fabric import Fabric
from fabric.loggers import CSVLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ppo import make_envs, mlp  # the same environments and network builder as the PPO example


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    parser.add_argument("--devices", default="1", help="processes/devices to run on (default: %(default)s)")
    parser.add_argument("--num-envs", type=int, default=8, help="environments per process")
    parser.add_argument("--n-steps", type=int, default=8, help="steps per environment per update")
    parser.add_argument(
        "--updates", type=int, default=1000, help="policy updates to run (default: %(default)s)"
    )
    parser.add_argument(
        "--actor-lr", type=float, default=1e-3, help="learning rate of the actor (default: %(default)s)"
    )
    parser.add_argument(
        "--critic-lr", type=float, default=3e-3, help="learning rate of the critic (default: %(default)s)"
    )
    parser.add_argument(
        "--gamma", type=float, default=0.99, help="discount factor for future rewards (default: %(default)s)"
    )
    parser.add_argument(
        "--ent-coef", type=float, default=0.01, help="weight of the entropy bonus (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "actor_critic"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    fabric = Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        loggers=CSVLogger(args.out, name=None, version="logs"),
    )
    fabric.launch()
    rank_seed = args.seed + 1000 * fabric.global_rank
    fabric.seed_everything(rank_seed)

    envs = make_envs(args.num_envs, asynchronous=False)
    n_obs, n_actions = envs.single_observation_space.shape[0], int(envs.single_action_space.n)
    actor: nn.Module = mlp(n_obs, n_actions, 64, out_gain=0.01)
    critic: nn.Module = mlp(n_obs, 1, 64, out_gain=1.0)
    # two models, two optimizers: set each up with its own
    actor, actor_opt = fabric.setup(actor, torch.optim.Adam(actor.parameters(), lr=args.actor_lr))
    critic, critic_opt = fabric.setup(critic, torch.optim.Adam(critic.parameters(), lr=args.critic_lr))

    device = fabric.device
    obs_np, _ = envs.reset(seed=rank_seed)
    running = np.zeros(args.num_envs)
    recent: deque[float] = deque(maxlen=20)
    first_mean: float | None = None
    mean = 0.0
    for update in range(1, args.updates + 1):
        obs_list, actions, rewards, dones = [], [], [], []
        for _ in range(args.n_steps):
            obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
            with torch.no_grad():
                action = Categorical(logits=actor(obs)).sample()
            obs_np, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
            running += reward
            for i in np.flatnonzero(terminated | truncated):
                recent.append(float(running[i]))
                running[i] = 0.0
            obs_list.append(obs)
            actions.append(action)
            rewards.append(torch.as_tensor(reward, dtype=torch.float32, device=device))
            dones.append(torch.as_tensor(terminated, dtype=torch.float32, device=device))

        # n-step returns, bootstrapped from the critic's value of the last observation
        with torch.no_grad():
            ret = critic(torch.as_tensor(obs_np, dtype=torch.float32, device=device)).squeeze(-1)
        returns = []
        for reward, done in zip(reversed(rewards), reversed(dones)):
            ret = reward + args.gamma * ret * (1.0 - done)
            returns.append(ret)
        b_obs = torch.cat(obs_list)
        b_returns = torch.cat(list(reversed(returns)))
        b_actions = torch.cat(actions)

        # the critic's step
        values = critic(b_obs).squeeze(-1)
        critic_loss = (b_returns - values).pow(2).mean()
        critic_opt.zero_grad()
        fabric.backward(critic_loss)
        fabric.clip_gradients(critic, critic_opt, max_norm=1.0)
        critic_opt.step()

        # the actor's step, on the advantages the critic gave before its update
        advantages = b_returns - values.detach()
        dist = Categorical(logits=actor(b_obs))
        actor_loss = -(dist.log_prob(b_actions) * advantages).mean() - args.ent_coef * dist.entropy().mean()
        actor_opt.zero_grad()
        fabric.backward(actor_loss)
        fabric.clip_gradients(actor, actor_opt, max_norm=1.0)
        actor_opt.step()

        if recent:
            mean = fabric.all_reduce(
                torch.tensor(float(np.mean(recent)), device=device), reduce_op="mean"
            ).item()
            if first_mean is None and len(recent) == recent.maxlen:
                first_mean = mean
        fabric.log_dict(
            {"mean_return_20": mean, "actor_loss": actor_loss.detach(), "critic_loss": critic_loss.detach()},
            step=update,
        )
        if update % 100 == 0:
            fabric.print(f"update {update:5d}  mean return (last 20 episodes) {mean:6.1f}")
    envs.close()
    fabric.logger.finalize("success")
    fabric.print(f"first mean return over 20 episodes {first_mean}, last {mean:.1f}")


if __name__ == "__main__":
    main()
