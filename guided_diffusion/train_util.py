"""Training loops for diffusion models (TrainLoop; training/classifier.py holds the classifiers' loop).

Both share the mechanics: data-parallel gradients (DDP, gradient accumulation over microbatches with no_sync),
mixed precision, AdamW with optional linear lr annealing and EDM2's schedule, classic and power-function EMAs
(phema.py), checkpoints every save_interval steps written
atomically as model{step:06d}.pt / ema_{rate}_{step:06d}.pt / opt{step:06d}.pt (a file name always equals the
number of optimizer steps done), and resuming from a path or from the newest complete set ("auto"), with the
loss scale, every rank's RNG state and the data position restored so that a resumed run continues exactly.
"""

from __future__ import annotations

import inspect
import os
import time

import torch
from torch.nn.parallel.distributed import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import dist_util, logger
from guided_diffusion.loading.checkpoint import atomic_torch_save, load_weights, read_bytes, save_state_dict, training_state_from_bytes
from guided_diffusion.networks.control import drop_controls
from guided_diffusion.networks.edm2 import has_mp_weights, project_weights
from guided_diffusion.networks.sigma_space import objective_from_flags
from .fp16_util import MixedPrecisionTrainer
from .nn import update_ema
from guided_diffusion.processes.objectives import EDMLoss, edm2_learning_rate
from guided_diffusion.training.phema import PowerFunctionEMA
from .resample import LossAwareSampler, UniformSampler, create_named_schedule_sampler
from guided_diffusion.training.state import (  # noqa: F401  (the original's names, importable from here)
    capture_rng_state,
    find_resume_checkpoint,
    parse_ema_rates,
    parse_phema_stds,
    parse_resume_step_from_filename,
    restore_rng_state,
)

# Buffers are not re-broadcast before each forward pass (as the original); newer torch names the option anew.
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                           else {"broadcast_buffers": False})

def log_loss_dict(diffusion, ts: torch.Tensor, losses: dict) -> None:
    """Log each loss's mean and its mean per timestep quartile (key_q0 .. key_q3)."""
    log_losses_by_quartile((4 * ts // diffusion.num_timesteps).clamp(0, 3), losses)


def log_losses_by_quartile(quartiles: torch.Tensor, losses: dict) -> None:
    """Log each loss's mean and its mean per quartile of the noise levels (key_q0 = least noise .. key_q3)."""
    for key, values in losses.items():
        logger.logkv_mean(key, values.mean().item())
        for quartile, value in zip(quartiles.tolist(), values.detach().cpu().tolist()):
            logger.logkv_mean(f"{key}_q{quartile}", value)


class _Loop:
    """What both loops share: optimizer, DDP, EMA, checkpoints, resuming and the step/log/save cycle."""

    def __init__(self, *, model, data, batch_size, microbatch, lr, ema_rate, log_interval, save_interval,
                 resume_checkpoint, use_fp16=False, use_bf16=False, fp16_scale_growth=1e-3, weight_decay=0.0,
                 lr_anneal_steps=0, max_steps=0, initial_lg_loss_scale=20.0, phema_stds="", phema_interval=0,
                 adam_betas=(0.9, 0.999), lr_ref_images=0, lr_rampup_images=0):
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.microbatch = microbatch if microbatch > 0 else batch_size
        if batch_size % self.microbatch:
            raise ValueError(f"--batch_size {batch_size} is not divisible by --microbatch {microbatch}")
        self.lr = lr
        self.lr_ref_images = lr_ref_images
        self.lr_rampup_images = lr_rampup_images
        self.ema_rate = parse_ema_rates(ema_rate)
        self.log_interval = log_interval
        self.save_interval = save_interval
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        self.max_steps = max_steps
        self.global_batch = batch_size * dist_util.get_world_size()
        self.log_dir = logger.get_dir() or "."

        self.resume_checkpoint = find_resume_checkpoint(resume_checkpoint, self.log_dir, self.ema_rate)
        self.resume_step = parse_resume_step_from_filename(self.resume_checkpoint) if self.resume_checkpoint else 0
        self.step = self.resume_step
        resume_state = self._read_resume_state()

        dist_util.sync_params(self.model.parameters())  # every rank starts from rank 0's weights
        self.mp_trainer = MixedPrecisionTrainer(model=model, use_fp16=use_fp16, use_bf16=use_bf16,
                                                fp16_scale_growth=fp16_scale_growth,
                                                initial_lg_loss_scale=initial_lg_loss_scale)
        if "model" in resume_state:  # float32 masters from the file, not from fp16-rounded weights
            self.mp_trainer.load_master_params(self.mp_trainer.state_dict_to_master_params(resume_state["model"]))
        self.opt = torch.optim.AdamW(self.mp_trainer.master_params, lr=lr, weight_decay=weight_decay,
                                     betas=tuple(adam_betas))
        self.ema_params = []
        for rate in self.ema_rate:
            source = resume_state.get("ema", {}).get(rate)
            params = (self.mp_trainer.state_dict_to_master_params(source) if source is not None
                      else self.mp_trainer.master_params)
            self.ema_params.append([p.detach().clone().float() for p in params])
        stds = parse_phema_stds(phema_stds)
        self.phema = PowerFunctionEMA(self.mp_trainer.master_params, stds) if stds else None
        if phema_interval < 0 or (phema_interval and not stds):
            raise ValueError(f"--phema_interval {phema_interval}: a positive image count, with --phema_stds")
        self.phema_interval = phema_interval
        self.nimg = self.step * self.global_batch  # training images seen (restored from the optimizer file)
        self._pending_rng = None
        if "opt" in resume_state:
            self._restore_training_state(resume_state["opt"])
        elif self.phema is not None and self.resume_step:
            raise ValueError(f"--phema_stds: the resumed checkpoint {self.resume_checkpoint} has no optimizer file "
                             "with the power-function EMAs: resume a run from its log folder (--resume_checkpoint auto)")
        if self.phema is not None and dist_util.get_rank() == 0:
            self.phema.forget_snapshots_after(self.log_dir, self.step)

        self.use_ddp = dist_util.get_world_size() > 1
        if self.use_ddp:
            device = dist_util.dev()
            self.ddp_model = DDP(model, device_ids=[device] if device.type == "cuda" else None,
                                 bucket_cap_mb=128, find_unused_parameters=False, **_NO_FORWARD_BUFFER_SYNC)
        else:
            self.ddp_model = model

    # ----- resuming -----------------------------------------------------------------------------------------

    def _read_resume_state(self) -> dict:
        """Load weights from the resume checkpoint into the model; read its EMA and optimizer companions."""
        if not self.resume_checkpoint:
            return {}
        logger.log(f"resuming from {self.resume_checkpoint} at step {self.resume_step}")
        state = dist_util.load_state_dict(self.resume_checkpoint)
        load_weights(self.model, state, source=self.resume_checkpoint)
        folder = os.path.dirname(self.resume_checkpoint)
        out = {"model": state, "ema": {}}
        for rate in self.ema_rate:
            path = os.path.join(folder, f"ema_{rate}_{self.resume_step:06d}.pt")
            if os.path.exists(path):
                out["ema"][rate] = dist_util.load_state_dict(path)
            else:
                logger.warn(f"no {path}: EMA {rate} restarts from the resumed weights")
        opt_path = os.path.join(folder, f"opt{self.resume_step:06d}.pt")
        if os.path.exists(opt_path):
            data = dist_util.broadcast_bytes(read_bytes(opt_path) if dist_util.get_rank() == 0 else None)
            out["opt"] = training_state_from_bytes(data, opt_path)
        else:
            logger.warn(f"no {opt_path}: the optimizer state restarts")
        return out

    def _restore_training_state(self, saved: dict) -> None:
        if "optimizer" not in saved:  # a bare optimizer state dict, as the original wrote
            self.opt.load_state_dict(saved)
            if self.phema is not None:
                raise ValueError(f"--phema_stds: {self.resume_checkpoint} comes from a run without power-function "
                                 "EMAs: start a new run")
            return
        self.nimg = saved.get("nimg", self.nimg)
        self.opt.load_state_dict(saved["optimizer"])
        if self.mp_trainer.use_fp16 and saved.get("lg_loss_scale") is not None:
            self.mp_trainer.lg_loss_scale = saved["lg_loss_scale"]
        sampler = getattr(self, "schedule_sampler", None)
        if saved.get("schedule_sampler") is not None and hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(saved["schedule_sampler"])
        rank = dist_util.get_rank()
        if len(saved.get("rng", [])) == dist_util.get_world_size():
            self._pending_rng = saved["rng"][rank]
        if self.phema is None and saved.get("phema") is not None:
            stds = ",".join(f"{s:g}" for s in saved["phema"]["stds"])
            raise ValueError(f"--phema_stds is not given, but the resumed run {self.resume_checkpoint} tracks "
                             f"power-function EMAs: pass --phema_stds {stds} to keep its snapshots going")
        if self.phema is not None:
            if saved.get("phema") is None:
                raise ValueError(f"--phema_stds given, but the resumed run {self.resume_checkpoint} tracked no "
                                 "power-function EMAs: start a new run")
            self.phema.load_state_dict(saved["phema"])
        positions = saved.get("data_position", [])
        if len(positions) == dist_util.get_world_size() and getattr(self.data, "position", None) not in (None, positions[rank]):
            logger.warn(f"the data stream is at batch {self.data.position}, the checkpoint at {positions[rank]}: "
                        "pass start_batch to load_data to resume it exactly")

    # ----- the cycle ----------------------------------------------------------------------------------------

    def _done(self) -> bool:
        if self.max_steps and self.step >= self.max_steps:
            return True
        return bool(self.lr_anneal_steps) and self.step >= self.lr_anneal_steps

    def run_loop(self) -> None:
        """Train until max_steps / lr_anneal_steps (forever if neither is set), saving along the way."""
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)  # last, so nothing in set-up consumes the restored streams
            self._pending_rng = None
        saved_at, last_time, last_step = None, time.perf_counter(), self.step
        bar = tqdm(total=self.max_steps or None, initial=self.step, desc="training", unit="step", mininterval=1.0,
                   disable=dist_util.get_rank() != 0)
        while not self._done():
            self._set_lr()
            self.run_step()
            self._count_images()
            self.step += 1
            bar.update(1)
            if self.phema_interval and self.nimg // self.phema_interval > (self.nimg - self.global_batch) // \
                    self.phema_interval and dist_util.get_rank() == 0:
                self._save_snapshots()
            if self.step % self.log_interval == 0:
                now = time.perf_counter()
                logger.logkv("step", self.step)
                logger.logkv("samples", self.step * self.global_batch)
                logger.logkv("images_per_sec", (self.step - last_step) * self.global_batch / max(now - last_time, 1e-9))
                last_time, last_step = now, self.step
                logger.dumpkvs()
            if self.step % self.save_interval == 0:
                self.save()
                saved_at = self.step
        bar.close()
        if saved_at != self.step and self.step > self.resume_step:
            self.save()

    def run_step(self) -> None:
        raise NotImplementedError

    def _count_images(self) -> None:
        """After every step: the count of training images seen, and the power-function EMAs updated with it (EDM2
        Appendix C; the classic EMAs are updated by the loops after successful steps only)."""
        self.nimg += self.global_batch
        if self.phema is not None:
            self.phema.update(self.mp_trainer.master_params, self.nimg, self.global_batch)

    def _set_lr(self) -> None:
        """The step's learning rate: EDM2's schedule in images (a no-op unless --lr_ref_images or
        --lr_rampup_images), times the linear annealing to zero at --lr_anneal_steps."""
        lr = edm2_learning_rate(self.nimg, self.lr, self.lr_ref_images, self.lr_rampup_images)
        if self.lr_anneal_steps:
            lr *= 1 - self.step / self.lr_anneal_steps
        if self.lr_anneal_steps or self.lr_ref_images or self.lr_rampup_images:
            logger.logkv("lr", lr)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _microbatches(self, *tensors):
        """Consecutive slices of the batch, each with a flag telling whether it is the last one."""
        n = tensors[0].shape[0]
        for i in range(0, n, self.microbatch):
            yield i + self.microbatch >= n, [t[i:i + self.microbatch] for t in tensors]

    # ----- checkpoints --------------------------------------------------------------------------------------

    def _save_snapshots(self) -> None:
        self.phema.save_snapshots(self.log_dir, self.step, self.nimg, self.mp_trainer.master_params_to_state_dict)

    def _ema_items(self):
        return zip(self.ema_rate, self.ema_params)

    def _sampler_state(self):
        sampler = getattr(self, "schedule_sampler", None)
        return sampler.state_dict() if hasattr(sampler, "state_dict") else None

    def _check_replicas(self) -> None:
        """Fail loudly if the ranks' parameters have drifted apart (they must stay identical under DDP)."""
        if dist_util.get_world_size() == 1:
            return
        checksum = sum(float(p.detach().double().sum()) + float(p.detach().double().abs().sum())
                       for p in self.mp_trainer.master_params)
        sums = dist_util.all_gather_objects(checksum)
        if len(set(sums)) != 1:
            raise RuntimeError(f"parameters differ across ranks at step {self.step}: checksums {sums}")
        logger.log(f"parameters identical on all {len(sums)} ranks at step {self.step} (checksum {checksum:.6e})")

    def save(self) -> None:
        """Write model, EMA and optimizer files for the current step (rank 0), then wait for every rank."""
        self._check_replicas()
        rng = dist_util.all_gather_objects(capture_rng_state())
        positions = dist_util.all_gather_objects(getattr(self.data, "position", None))
        if dist_util.get_rank() == 0:
            for rate, params in self._ema_items():
                save_state_dict(self.mp_trainer.master_params_to_state_dict(params),
                                os.path.join(self.log_dir, f"ema_{rate}_{self.step:06d}.pt"))
            save_state_dict(self.mp_trainer.master_params_to_state_dict(self.mp_trainer.master_params),
                            os.path.join(self.log_dir, f"model{self.step:06d}.pt"))
            if self.phema is not None and not self.phema_interval:
                self._save_snapshots()
            atomic_torch_save(
                {"optimizer": self.opt.state_dict(), "step": self.step,
                 "lg_loss_scale": self.mp_trainer.lg_loss_scale if self.mp_trainer.use_fp16 else None,
                 "rng": rng, "data_position": positions, "schedule_sampler": self._sampler_state(),
                 "phema": self.phema.state_dict() if self.phema is not None else None, "nimg": self.nimg},
                os.path.join(self.log_dir, f"opt{self.step:06d}.pt"),
            )
            logger.log(f"saved checkpoint for step {self.step} in {self.log_dir}")
        dist_util.barrier()


class TrainLoop(_Loop):
    """Trains a diffusion model: with diffusion.training_losses at timesteps from a schedule sampler (ADM), or
    with `objective` (objectives.EDMLoss: EDM's or EDM2's loss at continuous noise levels; diffusion is then None).

    label_dropout > 0 replaces each label by null_label with that probability (Ho & Salimans 2021), so that one
    network learns the conditional and the unconditional model for classifier-free guidance; control_dropout
    likewise replaces control records by the null record, independently. EDM2 networks get
    their weights projected back onto the unit sphere after every step (forced weight normalization)."""

    def __init__(self, *, model, diffusion, data, batch_size, microbatch, lr, ema_rate, log_interval,
                 save_interval, resume_checkpoint, use_fp16=False, fp16_scale_growth=1e-3, schedule_sampler=None,
                 weight_decay=0.0, lr_anneal_steps=0, use_bf16=False, max_steps=0, label_dropout=0.0,
                 null_label=None, phema_stds="", phema_interval=0, objective: EDMLoss | None = None,
                 adam_betas=(0.9, 0.999), lr_ref_images=0, lr_rampup_images=0, control_dropout=0.0):
        if label_dropout > 0 and null_label is None:
            raise ValueError("label dropout needs the model's null label")
        self.control_dropout = control_dropout
        self.diffusion = diffusion
        self.objective = objective
        self.schedule_sampler = None if objective is not None else schedule_sampler or UniformSampler(diffusion)
        self.label_dropout = label_dropout
        self.null_label = null_label
        self.force_weight_norm = has_mp_weights(model)
        super().__init__(model=model, data=data, batch_size=batch_size, microbatch=microbatch, lr=lr,
                         ema_rate=ema_rate, log_interval=log_interval, save_interval=save_interval,
                         resume_checkpoint=resume_checkpoint, use_fp16=use_fp16, use_bf16=use_bf16,
                         fp16_scale_growth=fp16_scale_growth, weight_decay=weight_decay,
                         lr_anneal_steps=lr_anneal_steps, max_steps=max_steps, phema_stds=phema_stds,
                         phema_interval=phema_interval, adam_betas=adam_betas, lr_ref_images=lr_ref_images,
                         lr_rampup_images=lr_rampup_images)

    def run_step(self) -> None:
        batch, cond = next(self.data)
        self.forward_backward(batch, cond)
        if self.mp_trainer.optimize(self.opt):
            if self.force_weight_norm:
                project_weights(self.model)
            for rate, params in self._ema_items():
                update_ema(params, self.mp_trainer.master_params, rate=rate)

    def _losses(self, micro: torch.Tensor, micro_cond: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """(per-sample losses, their weights, each sample's noise-level quartile) of one microbatch."""
        with self.mp_trainer.autocast():
            if self.objective is not None:
                losses, sigma = self.objective(self.ddp_model, micro, **micro_cond)
                return losses, torch.ones_like(sigma), self.objective.noise.quartile(sigma)
            t, weights = self.schedule_sampler.sample(micro.shape[0], micro.device)
            losses = self.diffusion.training_losses(self.ddp_model, micro, t, model_kwargs=micro_cond)
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
        return losses, weights, (4 * t // self.diffusion.num_timesteps).clamp(0, 3)

    def forward_backward(self, batch: torch.Tensor, cond: dict) -> None:
        """Accumulate the gradient of the batch's mean loss, one microbatch at a time."""
        self.mp_trainer.zero_grad()
        device = dist_util.dev()
        batch = batch.to(device)
        cond = {k: v.to(device) for k, v in cond.items()}
        if self.label_dropout > 0 and "y" in cond:
            dropped = torch.rand(len(cond["y"]), device=device) < self.label_dropout
            cond["y"] = cond["y"].masked_fill(dropped, self.null_label)
        if self.control_dropout > 0 and "control" in cond:
            cond["control"] = drop_controls(cond["control"], self.control_dropout)
        keys = sorted(cond)
        for last, (micro, *micro_cond) in self._microbatches(batch, *(cond[k] for k in keys)):
            micro_cond = dict(zip(keys, micro_cond))
            if last or not self.use_ddp:
                losses, weights, quartiles = self._losses(micro, micro_cond)
            else:
                with self.ddp_model.no_sync():
                    losses, weights, quartiles = self._losses(micro, micro_cond)
            # Weight by the microbatch's share, so the gradient equals the whole batch's.
            loss = (losses["loss"].float() * weights).mean() * (micro.shape[0] / batch.shape[0])
            log_losses_by_quartile(quartiles, {k: v * weights for k, v in losses.items()})
            self.mp_trainer.backward(loss)


def adam_betas(spec: str, arch: str = "adm") -> tuple[float, float]:
    """--adam_betas "0.9,0.99"; "" = Adam's (0.9, 0.999), EDM2's (0.9, 0.99) for --arch edm2."""
    if not spec:
        return (0.9, 0.99) if arch == "edm2" else (0.9, 0.999)
    try:
        betas = tuple(float(v) for v in spec.split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"--adam_betas {spec!r}: expected two numbers in [0, 1) like 0.9,0.99")
    return betas


def train_diffusion_from_args(args, model, diffusion, make_data, label_dropout: float = 0.0,
                              null_label: int | None = None, control_dropout: float = 0.0) -> None:
    """What image_train.py and super_res_train.py share: resolve --resume_checkpoint, open the data stream at
    the resumed position (make_data(start_batch)), and run a TrainLoop with the script's flags (diffusion None:
    the network is a denoiser trained with the EDM/EDM2 objective of the flags)."""
    resume = find_resume_checkpoint(args.resume_checkpoint, logger.get_dir(), parse_ema_rates(args.ema_rate))
    data = make_data(parse_resume_step_from_filename(resume) if resume else 0)
    logger.log("training...")
    sigma_space = diffusion is None
    TrainLoop(
        model=model, diffusion=diffusion, data=data, batch_size=args.batch_size, microbatch=args.microbatch,
        lr=args.lr, ema_rate=args.ema_rate, log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=resume, use_fp16=args.use_fp16, fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=None if sigma_space else create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, use_bf16=args.use_bf16,
        max_steps=args.max_steps, label_dropout=label_dropout, null_label=null_label, phema_stds=args.phema_stds,
        phema_interval=args.phema_interval, objective=objective_from_flags(args) if sigma_space else None,
        adam_betas=adam_betas(args.adam_betas, getattr(args, "arch", "adm")), lr_ref_images=args.lr_ref_images,
        lr_rampup_images=args.lr_rampup_images, control_dropout=control_dropout,
    ).run_loop()
