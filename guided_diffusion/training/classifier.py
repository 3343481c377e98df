"""The noisy-classifier training loop (classifier_train.py): cross-entropy on noised images, with accuracy and
validation logged by noise-level quartile, on the shared training mechanics of train_util._Loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guided_diffusion import dist_util
from guided_diffusion.processes.objectives import EDMConditioning, EDMLoss
from guided_diffusion.resample import UniformSampler
from guided_diffusion.train_util import _Loop, log_losses_by_quartile


def compute_top_k(logits: torch.Tensor, labels: torch.Tensor, k: int, reduction: str = "mean") -> torch.Tensor:
    """Top-k accuracy per sample (reduction "none") or averaged."""
    top = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices
    correct = (top == labels[:, None]).any(dim=-1).float()
    return correct if reduction == "none" else correct.mean()


class ClassifierTrainLoop(_Loop):
    """Trains a noisy-image classifier: cross-entropy on images noised to timesteps from the schedule sampler
    (or clean images with noised=False), with top-1/top-5 accuracy and validation, by noise-level quartile.
    With `objective` (--objective edm) the noise levels come from its log-normal distribution instead and the
    classifier sees what an EDM network sees, c_in(sigma) x and ln(sigma) / 4 (objectives.EDMConditioning)."""

    def __init__(self, *, model, diffusion, data, val_data=None, batch_size, microbatch, lr, log_interval,
                 save_interval, eval_interval=5, resume_checkpoint="", noised=True, schedule_sampler=None,
                 weight_decay=0.0, anneal_lr=False, iterations=0, use_fp16=False, use_bf16=False,
                 objective: EDMLoss | None = None):
        self.diffusion = diffusion
        self.objective = objective
        self.conditioning = EDMConditioning(objective.sigma_data) if objective is not None else None
        self.val_data = val_data
        self.noised = noised
        self.eval_interval = eval_interval
        self.schedule_sampler = None if objective else schedule_sampler or UniformSampler(diffusion)
        super().__init__(model=model, data=data, batch_size=batch_size, microbatch=microbatch, lr=lr, ema_rate=[],
                         log_interval=log_interval, save_interval=save_interval,
                         resume_checkpoint=resume_checkpoint, use_fp16=use_fp16, use_bf16=use_bf16,
                         weight_decay=weight_decay, lr_anneal_steps=iterations if anneal_lr else 0,
                         max_steps=iterations, initial_lg_loss_scale=16.0)

    def run_step(self) -> None:
        self.mp_trainer.zero_grad()
        self.forward_backward_log(self.data, prefix="train")
        self.mp_trainer.optimize(self.opt)
        if self.val_data is not None and self.step % self.eval_interval == 0:
            self.ddp_model.eval()
            with torch.no_grad():
                self.forward_backward_log(self.val_data, prefix="val")
            self.ddp_model.train()

    def _noised(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the network's input, its timesteps or noise labels, each sample's noise-level quartile)."""
        n, device = batch.shape[0], batch.device
        if not self.noised:
            return batch, torch.zeros(n, dtype=torch.long, device=device), torch.zeros(n, dtype=torch.long)
        if self.objective is not None:
            sigma = self.objective.noise.sample(n, device)
            scale = self.conditioning.input_scale(sigma).reshape(-1, 1, 1, 1)
            noisy = (batch + torch.randn_like(batch) * sigma.reshape(-1, 1, 1, 1)) * scale
            return noisy, self.conditioning.noise_label(sigma), self.objective.noise.quartile(sigma)
        t, _ = self.schedule_sampler.sample(n, device)
        return self.diffusion.q_sample(batch, t), t, (4 * t // self.diffusion.num_timesteps).clamp(0, 3)

    def forward_backward_log(self, data, prefix: str) -> None:
        """Loss and accuracy of the next batch of `data`; gradients only when grad mode is on."""
        batch, extra = next(data)
        device = dist_util.dev()
        labels = extra["y"].to(device)
        batch = batch.to(device)
        batch, t, quartiles = self._noised(batch)
        for last, (sub_batch, sub_labels, sub_t, sub_q) in self._microbatches(batch, labels, t, quartiles):
            def compute_logits():
                with self.mp_trainer.autocast():
                    return self.ddp_model(sub_batch, timesteps=sub_t).float()

            if last or not self.use_ddp or not torch.is_grad_enabled():
                logits = compute_logits()
            else:
                with self.ddp_model.no_sync():
                    logits = compute_logits()
            loss = F.cross_entropy(logits, sub_labels, reduction="none")
            log_losses_by_quartile(sub_q, {
                f"{prefix}_loss": loss.detach(),
                f"{prefix}_acc@1": compute_top_k(logits, sub_labels, k=1, reduction="none"),
                f"{prefix}_acc@5": compute_top_k(logits, sub_labels, k=5, reduction="none"),
            })
            if torch.is_grad_enabled():
                self.mp_trainer.backward(loss.mean() * (len(sub_batch) / len(batch)))
