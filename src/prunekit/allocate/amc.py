"""AMC (He et al. 2018): a DDPG agent that chooses each layer's pruning ratio.

The agent walks the layers in order. At layer t its state is

    s_t = [t / L, static features of the layer (normalised by their largest value over
           the layers), the layer's share of the dense cost, cost reduced so far / dense,
           cost still removable by the layers after t / dense, previous action a_{t−1}]

and its action a_t ∈ [0, max ratio of the layer] is the fraction of the layer's units to
prune. Actions are clipped so that the constraint always holds: a_t is raised to the
smallest ratio with which the budget is still reachable if every later layer is pruned to
its maximum. At the end of an episode the counts are fitted to the budget (to within one
unit) and the pruned model is evaluated without fine-tuning, as in the paper; the reward is
R = −error = accuracy − 1.

DDPG: an actor μ(s) (sigmoid output scaled to the layer's range) and a critic Q(s, a), both
two-layer MLPs. Every step of an episode shares its reward (γ = 1, reward at the end), so
the critic regresses Q(s_t, a_t) on R − b, b a moving average of past rewards (the paper's
baseline), and the actor follows ∇_a Q(s, μ(s)). Exploration: `warmup` episodes of uniform
random actions, then μ(s) plus Gaussian noise σ·decay^episode, clipped to the range.

Determinism: networks are initialised from `seed`, all noise and minibatches come from one
torch.Generator. With a RunDir the whole search state (networks, optimisers, replay buffer,
generator, history) is checkpointed after every episode and a rerun resumes from it to the
same result. Episode evaluations go through the executor, `parallel` episodes at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ..plots import line_plot
from .base import Allocation, Allocator, PruningProblem, smallest_count, fit_to_budget, resolve_target
from .executor import evaluate_counts, get_executor


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


class AMC(Allocator):
    name = "amc"

    def __init__(self, budget: float, *, episodes: int = 100, warmup: int = 20, hidden: int = 64,
                 actor_lr: float = 1e-3, critic_lr: float = 1e-2, batch_size: int = 64, updates: int = 20,
                 noise: float = 0.3, noise_decay: float = 0.97, baseline_momentum: float = 0.9, parallel: int = 1,
                 seed: int = 0, executor=None, run=None):
        if episodes < 1 or not 0 <= warmup <= episodes or parallel < 1:
            raise PrunekitError(f"need episodes ≥ 1, 0 ≤ warmup ≤ episodes and parallel ≥ 1; got episodes={episodes}, "
                                f"warmup={warmup}, parallel={parallel}.")
        self.budget, self.episodes, self.warmup, self.hidden = budget, episodes, warmup, hidden
        self.actor_lr, self.critic_lr, self.batch_size, self.updates = actor_lr, critic_lr, batch_size, updates
        self.noise, self.noise_decay, self.momentum, self.parallel = noise, noise_decay, baseline_momentum, parallel
        self.seed, self.executor, self.run = seed, executor, run

    # State ---------------------------------------------------------------------------------
    def _static(self, problem: PruningProblem) -> list[list[float]]:
        feats = [problem.features(l.name) for l in problem.layers]
        width = max(len(f) for f in feats)
        feats = [f + [0.0] * (width - len(f)) for f in feats]
        scale = [max(abs(f[j]) for f in feats) or 1.0 for j in range(width)]
        dense, floor = problem.dense_cost(), problem.min_cost()
        L = len(problem.layers)
        return [[t / L] + [v / s for v, s in zip(f, scale)] + [(dense - problem.cost({l.name: l.max_units})) / dense]
                for t, (l, f) in enumerate(zip(problem.layers, feats))] if dense > floor else None

    def _rollout(self, problem, static, target, actor, explore_random, sigma, gen):
        dense = problem.dense_cost()
        counts = problem.max_counts()  # layers not yet decided count as fully pruned (for the clip)
        states, actions, previous = [], [], 0.0
        for t, l in enumerate(problem.layers):
            decided = {n: counts[n] for n in [m.name for m in problem.layers[:t]]}
            rest = {m.name: m.max_units for m in problem.layers[t + 1:]}
            reduced = dense - problem.cost(decided)
            removable = dense - problem.cost(rest)
            state = torch.tensor(static[t] + [reduced / dense, removable / dense, previous], dtype=torch.float32)
            top = l.max_units / l.units
            if explore_random:
                a = float(torch.rand((), generator=gen)) * top
            else:
                with torch.no_grad():
                    a = float(torch.sigmoid(actor(state))) * top
                a = min(top, max(0.0, a + sigma * float(torch.randn((), generator=gen))))
            # Clip from below so the budget stays reachable with every later layer at its maximum.
            k_min = smallest_count(problem, {**decided, **rest}, l.name, 0, l.max_units, target)
            k = max(k_min, min(l.max_units, round(a * l.units)))
            a = k / l.units
            counts[l.name] = k
            states.append(state)
            actions.append(a / top if top else 0.0)  # the actor's output space: fraction of the range
            previous = a
        return problem.full(counts), states, actions

    # Search --------------------------------------------------------------------------------
    def _allocate(self, problem: PruningProblem, stop_after: int | None = None) -> Allocation:
        target = resolve_target(problem, self.budget)
        static = self._static(problem)
        if static is None:
            raise PrunekitError("AMC: no layer can be pruned (every max ratio is 0).")
        n_state = len(static[0]) + 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            actor, critic = _mlp(n_state, self.hidden, 1), _mlp(n_state + 1, self.hidden, 1)
        actor_opt = torch.optim.Adam(actor.parameters(), lr=self.actor_lr)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=self.critic_lr)
        gen = torch.Generator().manual_seed(self.seed)
        buffer_s, buffer_a, buffer_r = [], [], []
        history, best, baseline, episode = [], None, None, 0
        if self.run is not None and self.run.has_checkpoint("amc"):
            saved = self.run.load_checkpoint("amc")
            actor.load_state_dict(saved["actor"]), critic.load_state_dict(saved["critic"])
            actor_opt.load_state_dict(saved["actor_opt"]), critic_opt.load_state_dict(saved["critic_opt"])
            gen.set_state(saved["generator"])
            buffer_s, buffer_a, buffer_r = list(saved["s"]), list(saved["a"]), list(saved["r"])
            history, best, baseline, episode = saved["history"], saved["best"], saved["baseline"], saved["episode"]
        executor = get_executor(self.executor)
        while episode < self.episodes:
            if stop_after is not None and episode >= stop_after:
                break
            batch = min(self.parallel, self.episodes - episode)
            rollouts = []
            for j in range(batch):
                e = episode + j
                sigma = self.noise * self.noise_decay ** max(0, e - self.warmup)
                counts, states, actions = self._rollout(problem, static, target, actor, e < self.warmup, sigma, gen)
                rollouts.append((fit_to_budget(problem, counts, target, [l.name for l in problem.layers]),
                                 states, actions))
            accuracies = executor.map(evaluate_counts, problem, [r[0] for r in rollouts])
            for (counts, states, actions), accuracy in zip(rollouts, accuracies):
                reward = accuracy - 1.0
                baseline = reward if baseline is None else self.momentum * baseline + (1 - self.momentum) * reward
                buffer_s += states
                buffer_a += [torch.tensor([a]) for a in actions]
                buffer_r += [torch.tensor([reward - baseline])] * len(states)
                if best is None or reward > best["reward"]:
                    best = {"reward": reward, "accuracy": accuracy, "counts": counts, "episode": episode}
                history.append({"episode": episode, "reward": reward, "accuracy": accuracy,
                                "cost": problem.cost(counts), "ratios": problem.ratios_for(counts)})
                episode += 1
            if episode > self.warmup:
                self._learn(actor, critic, actor_opt, critic_opt, buffer_s, buffer_a, buffer_r, gen)
            if self.run is not None:
                self.run.save_checkpoint("amc", {
                    "actor": actor.state_dict(), "critic": critic.state_dict(), "actor_opt": actor_opt.state_dict(),
                    "critic_opt": critic_opt.state_dict(), "generator": gen.get_state(), "s": buffer_s,
                    "a": buffer_a, "r": buffer_r, "history": history, "best": best, "baseline": baseline,
                    "episode": episode})
        finished = episode >= self.episodes
        result = self._result(problem, best["counts"], target, evaluate=False, decisions=history,
                              details={"best_episode": best["episode"], "best_reward": best["reward"],
                                       "learning_curve": [h["reward"] for h in history], "finished": finished})
        result.accuracy = best["accuracy"]
        if self.run is not None and finished:
            xs = [h["episode"] for h in history]
            line_plot(self.run.plot_path("amc_learning_curve.png"), "episode", "reward (−error, no fine-tuning)",
                      {"episode reward": (xs, [h["reward"] for h in history])}, title="AMC learning curve")
        return result

    def _learn(self, actor, critic, actor_opt, critic_opt, buffer_s, buffer_a, buffer_r, gen):
        S, A, R = torch.stack(buffer_s), torch.stack(buffer_a), torch.stack(buffer_r)
        for _ in range(self.updates):
            idx = torch.randint(len(S), (min(self.batch_size, len(S)),), generator=gen)
            s, a, r = S[idx], A[idx], R[idx]
            critic_loss = ((critic(torch.cat([s, a], 1)) - r) ** 2).mean()  # Monte-Carlo target (γ = 1)
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()
            actor_loss = -critic(torch.cat([s, torch.sigmoid(actor(s))], 1)).mean()  # ascend Q(s, μ(s))
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
