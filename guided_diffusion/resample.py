"""Timestep samplers for training: uniform, or importance sampling by the loss's second moment (iDDPM 3.3)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")  # the --schedule_sampler choices


def create_named_schedule_sampler(name: str, diffusion) -> "ScheduleSampler":
    """A ScheduleSampler by name: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown schedule_sampler {name!r}: choose one of {', '.join(SCHEDULE_SAMPLERS)}")


class ScheduleSampler(ABC):
    """A distribution over timesteps, with importance weights that keep the loss estimate unbiased."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalized positive probabilities of each timestep."""

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [batch_size] and their importance weights 1 / (T p(t))."""
        w = self.weights()
        p = w / np.sum(w)
        indices = np.random.choice(len(p), size=(batch_size,), p=p)
        weights = 1 / (len(p) * p[indices])
        return torch.from_numpy(indices).long().to(device), torch.from_numpy(weights).float().to(device)


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the losses it sees, kept identical on every rank."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Gather (timestep, loss) pairs from all ranks and update every rank's sampler with all of them."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())
            return
        world = dist.get_world_size()
        sizes = [torch.tensor([0], dtype=torch.int32, device=local_ts.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(local_ts)], dtype=torch.int32, device=local_ts.device))
        sizes = [int(s.item()) for s in sizes]
        longest = max(sizes)
        # all_gather needs equal shapes: pad every rank's batch to the longest.
        ts_bufs = [torch.zeros(longest, dtype=local_ts.dtype, device=local_ts.device) for _ in sizes]
        loss_bufs = [torch.zeros(longest, dtype=local_losses.dtype, device=local_losses.device) for _ in sizes]
        dist.all_gather(ts_bufs, torch.nn.functional.pad(local_ts, (0, longest - len(local_ts))))
        dist.all_gather(loss_bufs, torch.nn.functional.pad(local_losses, (0, longest - len(local_losses))))
        timesteps = [t for buf, n in zip(ts_bufs, sizes) for t in buf[:n].tolist()]
        losses = [x for buf, n in zip(loss_bufs, sizes) for x in buf[:n].tolist()]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """Update the sampler with the losses of every rank (same call on every rank)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over the last `history_per_term` losses, mixed with uniform."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=int)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]  # drop the oldest
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def state_dict(self) -> dict:
        """The loss history, to be saved with a checkpoint."""
        return {"history": torch.from_numpy(self._loss_history.copy()), "counts": torch.from_numpy(self._loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self._loss_history = state["history"].numpy().astype(np.float64)
        self._loss_counts = state["counts"].numpy().astype(int)

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())
