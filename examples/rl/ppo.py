"""PPO on gymnasium's CartPole-v1 with fabric: several environment workers per process, 1 process or DDP.

Each process steps its own vector of environments (own seeds), collects a rollout, and trains the
same agent: under DDP the gradients are averaged across processes, so every process holds the same
weights. Training stops when the mean return of the last 100 finished episodes (all processes
together: 100 / devices from each) reaches --target (475: CartPole's "solved"), or after --total-steps environment steps; then
the greedy policy is evaluated on 100 fresh episodes.

    python examples/rl/ppo.py                       # one process, 8 environments
    python examples/rl/ppo.py --devices 2           # two processes (DDP over gloo), 4 environments each
    python examples/rl/ppo.py --devices 2 --check   # exit with an error unless evaluation reaches --target
    python examples/plot_metrics.py out/ppo/logs/metrics.csv

Prints a line every few updates (steps, mean return of the last 100 episodes, losses) and at the end
the evaluation's mean return over 100 episodes. Needs `pip install gymnasium` (or `.[examples]`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections import deque

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from fabric import Fabric
from fabric.loggers import CSVLogger, Logger, TensorBoardLogger


def make_envs(num_envs: int, asynchronous: bool):  # type: ignore[no-untyped-def]
    try:
        import gymnasium as gym
    except ImportError:
        raise SystemExit("This example needs gymnasium: pip install gymnasium") from None
    # SAME_STEP: a finished episode's last observation comes back in info["final_obs"] and the
    # returned observation is already the next episode's first, the classic convention for PPO.
    return gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="async" if asynchronous else "sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def mlp(inputs: int, outputs: int, hidden: int, out_gain: float) -> nn.Sequential:
    layers = [
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, outputs),
    ]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=out_gain if layer is layers[-1] else 2**0.5)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """Separate actor (action logits) and critic (state value) networks in one module, one optimizer."""

    def __init__(self, observations: int, actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.actor = mlp(observations, actions, hidden, out_gain=0.01)
        self.critic = mlp(observations, 1, hidden, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.critic(obs).squeeze(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a (steps, envs) rollout; ``dones[t]`` ends the episode after step t."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages, advantages + values


def evaluate(agent: nn.Module, episodes: int, seed: int, device: torch.device) -> list[float]:
    """Greedy (argmax) returns of ``episodes`` episodes, run 10 at a time."""
    returns: list[float] = []
    envs = make_envs(min(10, episodes), asynchronous=False)
    obs, _ = envs.reset(seed=seed)
    running = np.zeros(envs.num_envs)
    while len(returns) < episodes:
        with torch.no_grad():
            logits, _ = agent(torch.as_tensor(obs, dtype=torch.float32, device=device))
        obs, reward, terminated, truncated, _ = envs.step(logits.argmax(-1).cpu().numpy())
        running += reward
        for i in np.flatnonzero(terminated | truncated):
            returns.append(float(running[i]))
            running[i] = 0.0
    envs.close()
    return returns[:episodes]


def make_loggers(out: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(out, name=None, version="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name=None, version="tensorboard"))
    return loggers


def progress(iterable, fabric: Fabric, **kwargs):  # type: ignore[no-untyped-def]
    """A tqdm bar on rank 0 when stderr is a terminal and tqdm is installed; the plain iterable otherwise."""
    if not (fabric.is_global_zero and sys.stderr.isatty() and importlib.util.find_spec("tqdm")):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    parser.add_argument("--devices", default="1", help="processes/devices to run on (default: %(default)s)")
    parser.add_argument(
        "--num-envs", type=int, default=None, help="environments per process (default 8 / devices)"
    )
    parser.add_argument("--async-envs", action="store_true", help="one subprocess per environment")
    parser.add_argument("--rollout-steps", type=int, default=32, help="steps per environment per update")
    parser.add_argument("--total-steps", type=int, default=300_000, help="environment steps, all processes")
    parser.add_argument(
        "--update-epochs",
        type=int,
        default=20,
        help="passes over each rollout per update (default: %(default)s)",
    )
    parser.add_argument(
        "--minibatches", type=int, default=1, help="minibatches per rollout (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--gamma", type=float, default=0.98, help="discount factor for future rewards (default: %(default)s)"
    )
    parser.add_argument(
        "--gae-lambda",
        type=float,
        default=0.8,
        help="lambda of generalized advantage estimation (default: %(default)s)",
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=0.2,
        help="PPO clip range for the probability ratio (default: %(default)s)",
    )
    parser.add_argument(
        "--vf-coef", type=float, default=0.5, help="weight of the value-function loss (default: %(default)s)"
    )
    parser.add_argument(
        "--ent-coef", type=float, default=0.0, help="weight of the entropy bonus (default: %(default)s)"
    )
    parser.add_argument(
        "--max-grad-norm", type=float, default=0.5, help="clip gradients to this norm (default: %(default)s)"
    )
    parser.add_argument(
        "--target", type=float, default=475.0, help="mean return over 100 episodes to stop at"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "ppo"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="fail unless the evaluation reaches --target")
    args = parser.parse_args(argv)

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, loggers=make_loggers(args.out))
    fabric.launch()
    num_envs = args.num_envs or max(1, 8 // fabric.world_size)
    rank_seed = args.seed + 1000 * fabric.global_rank  # each process: its own environments and action samples
    fabric.seed_everything(rank_seed)

    envs = make_envs(num_envs, args.async_envs)
    observations = envs.single_observation_space.shape[0]
    agent = Agent(observations, int(envs.single_action_space.n))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)
    agent, optimizer = fabric.setup(agent, optimizer)  # DDP: rank 0's initial weights everywhere
    for logger in fabric.loggers:
        logger.log_hyperparams({**vars(args), "num_envs_per_process": num_envs})

    device = fabric.device
    steps, envs_n = args.rollout_steps, num_envs
    buf_obs = torch.zeros(steps, envs_n, observations, device=device)
    buf_actions = torch.zeros(steps, envs_n, dtype=torch.long, device=device)
    buf_logprobs = torch.zeros(steps, envs_n, device=device)
    buf_rewards = torch.zeros(steps, envs_n, device=device)
    buf_dones = torch.zeros(steps, envs_n, device=device)
    buf_values = torch.zeros(steps, envs_n, device=device)

    steps_per_update = steps * envs_n * fabric.world_size
    updates = max(1, args.total_steps // steps_per_update)
    # this process's share of the last 100 finished episodes (50 each on 2 processes)
    recent: deque[float] = deque(maxlen=math.ceil(100 / fabric.world_size))
    running = np.zeros(envs_n)
    obs_np, _ = envs.reset(seed=rank_seed)
    obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
    start = time.perf_counter()
    mean_recent = 0.0
    for update in progress(range(1, updates + 1), fabric, desc="updates"):
        frac = 1.0 - (update - 1) / updates
        for group in optimizer.param_groups:
            group["lr"] = frac * args.lr  # linear decay, as in the usual CartPole settings

        # --- collect a rollout with this process's environments
        agent.eval()
        for t in range(steps):
            with torch.no_grad():
                logits, value = agent(obs)
            dist = Categorical(logits=logits)
            action = dist.sample()
            buf_obs[t], buf_actions[t], buf_logprobs[t], buf_values[t] = (
                obs,
                action,
                dist.log_prob(action),
                value,
            )
            obs_np, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            reward = reward.astype(np.float32)
            running += reward  # the episode's return, before any bootstrap below
            if truncated.any():  # a time limit is not a failure: bootstrap from the last observation's value
                final = np.stack([info["final_obs"][i] for i in np.flatnonzero(truncated)])
                with torch.no_grad():
                    _, final_value = agent(torch.as_tensor(final, dtype=torch.float32, device=device))
                reward[truncated] += args.gamma * final_value.cpu().numpy()
            for i in np.flatnonzero(terminated | truncated):
                recent.append(float(running[i]))
                running[i] = 0.0
            buf_rewards[t] = torch.as_tensor(reward, device=device)
            buf_dones[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)
            obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
        with torch.no_grad():
            _, next_value = agent(obs)
        advantages, returns = gae(buf_rewards, buf_values, buf_dones, next_value, args.gamma, args.gae_lambda)

        # --- PPO update on this process's rollout; DDP averages the gradients across processes
        agent.train()
        b_obs, b_actions = buf_obs.flatten(0, 1), buf_actions.flatten()
        b_logprobs, b_adv, b_returns = buf_logprobs.flatten(), advantages.flatten(), returns.flatten()
        batch = b_obs.shape[0]
        minibatch = batch // args.minibatches
        for _ in range(args.update_epochs):
            order = torch.randperm(batch, device=device)
            for begin in range(0, batch, minibatch):
                idx = order[begin : begin + minibatch]
                logits, value = agent(b_obs[idx])
                dist = Categorical(logits=logits)
                ratio = (dist.log_prob(b_actions[idx]) - b_logprobs[idx]).exp()
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - args.clip, 1 + args.clip) * adv).mean()
                value_loss = 0.5 * (value - b_returns[idx]).pow(2).mean()
                entropy = dist.entropy().mean()
                loss = policy_loss + args.vf_coef * value_loss - args.ent_coef * entropy
                optimizer.zero_grad()
                fabric.backward(loss)
                fabric.clip_gradients(agent, optimizer, max_norm=args.max_grad_norm)
                optimizer.step()

        # --- progress: the mean of the last 100 episodes over all processes
        stats = torch.tensor([sum(recent), len(recent)], dtype=torch.float64, device=device)
        stats = fabric.all_reduce(stats, reduce_op="sum")
        mean_recent = (stats[0] / stats[1]).item() if stats[1] > 0 else 0.0
        env_steps = update * steps_per_update
        fabric.log_dict(
            {
                "env_steps": env_steps,
                "mean_return_100": mean_recent,
                "policy_loss": policy_loss.detach(),
                "value_loss": value_loss.detach(),
                "entropy": entropy.detach(),
            },
            step=update,
        )
        if update % 10 == 0 or mean_recent >= args.target:
            fabric.print(
                f"update {update:4d}  steps {env_steps:7d}  mean return (last 100) {mean_recent:6.1f}  "
                f"value loss {value_loss.item():8.3f}  {time.perf_counter() - start:5.0f}s"
            )
        # every process needs its full share before the mean counts as "the last 100 episodes"
        full = fabric.all_reduce(
            torch.tensor(float(len(recent) == recent.maxlen), device=device), reduce_op="min"
        )
        if mean_recent >= args.target and full.item() == 1.0:
            fabric.print(f"reached {mean_recent:.1f} >= {args.target} after {env_steps} environment steps")
            break
    envs.close()

    # --- greedy evaluation: 100 episodes split across processes
    share = 100 // fabric.world_size + (fabric.global_rank < 100 % fabric.world_size)
    agent.eval()
    returns = evaluate(agent, share, seed=10_000 + rank_seed, device=device)
    total = fabric.all_reduce(
        torch.tensor([sum(returns), len(returns)], dtype=torch.float64, device=device), reduce_op="sum"
    )
    eval_mean = (total[0] / total[1]).item()
    fabric.log_dict({"eval_mean_return_100": eval_mean}, step=update)
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.print(f"evaluation: mean return over 100 episodes {eval_mean:.1f} (greedy policy)")
    fabric.save(os.path.join(args.out, "agent.ckpt"), {"agent": agent})
    if args.check and eval_mean < args.target:
        sys.exit(f"evaluation mean return {eval_mean:.1f} is below the target {args.target}")


if __name__ == "__main__":
    main()
