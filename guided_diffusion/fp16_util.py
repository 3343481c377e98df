"""Half-precision storage of the networks' convolutions and the mixed-precision optimizer step."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import logger

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to_f16(module: nn.Module) -> None:
    """Store a convolution's weight and bias in float16 (other modules are left alone)."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo convert_module_to_f16."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


class MixedPrecisionTrainer:
    """Optimizer steps for fp32, bf16-autocast or fp16 training.

    With use_fp16 the network's torso holds float16 weights while the optimizer updates float32 master copies:
    the loss is multiplied by 2^lg_loss_scale before backward, every gradient is unscaled into the masters, and a
    step whose gradients hold inf/nan is skipped with the scale lowered by one power of two (dynamic loss
    scaling). With use_bf16 the forward runs under bfloat16 autocast and weights stay float32.
    """

    def __init__(self, *, model: nn.Module, use_fp16: bool = False, use_bf16: bool = False,
                 fp16_scale_growth: float = 1e-3, initial_lg_loss_scale: float = 20.0):
        if use_fp16 and use_bf16:
            raise ValueError("use_fp16 and use_bf16 exclude each other: pick one")
        self.model = model
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.fp16_scale_growth = fp16_scale_growth
        self.lg_loss_scale = initial_lg_loss_scale
        self.param_names = [name for name, _ in model.named_parameters()]
        self.model_params = list(model.parameters())
        if use_fp16:
            # Masters copy the current values first, so float32 weights keep their precision.
            self.master_params = [p.detach().clone().float().requires_grad_(True) for p in self.model_params]
            model.convert_to_fp16()
        else:
            self.master_params = self.model_params

    def autocast(self):
        """The context the forward pass runs in (bfloat16 autocast when use_bf16)."""
        device_type = self.model_params[0].device.type if self.model_params else "cpu"
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def zero_grad(self) -> None:
        for p in self.model_params:
            p.grad = None

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate loss (scaled by the loss scale under fp16)."""
        (loss * 2**self.lg_loss_scale if self.use_fp16 else loss).backward()

    def optimize(self, opt: torch.optim.Optimizer) -> bool:
        """Take an optimizer step; returns False when an fp16 step was skipped for inf/nan gradients."""
        if not self.use_fp16:
            grad_norm, param_norm = self._norms(self.master_params, 1.0)
            logger.logkv_mean("grad_norm", grad_norm)
            logger.logkv_mean("param_norm", param_norm)
            opt.step()
            return True
        logger.logkv_mean("lg_loss_scale", self.lg_loss_scale)
        for master, param in zip(self.master_params, self.model_params):
            master.grad = torch.zeros_like(master) if param.grad is None else param.grad.detach().float()
        scale = 2**self.lg_loss_scale
        grad_norm, param_norm = self._norms(self.master_params, scale)
        if not math.isfinite(grad_norm):
            self.lg_loss_scale -= 1
            logger.log(f"Found NaN or inf gradients, lowered lg_loss_scale to {self.lg_loss_scale}")
            self._clear_grads()
            return False
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        for master in self.master_params:
            master.grad.mul_(1.0 / scale)
        opt.step()
        self._clear_grads()
        with torch.no_grad():
            for master, param in zip(self.master_params, self.model_params):
                param.copy_(master.to(param.dtype))
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _clear_grads(self) -> None:
        for p in self.master_params:
            p.grad = None
        self.zero_grad()

    @staticmethod
    @torch.no_grad()
    def _norms(params, grad_scale: float) -> tuple[float, float]:
        """L2 norms of all gradients (divided by grad_scale) and of all parameters, from per-tensor norms
        (torch._foreach_norm) combined on the device: one host sync."""

        def total(tensors):
            if not tensors:
                return torch.zeros((), dtype=torch.float64, device=params[0].device)
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).double())

        grad_norm, param_norm = torch.stack([total([p.grad for p in params if p.grad is not None]),
                                             total(list(params))]).tolist()
        return grad_norm / grad_scale, param_norm

    def master_params_to_state_dict(self, master_params) -> dict:
        """A state dict of the model with the given (float32) parameter values."""
        state = self.model.state_dict()
        for name, value in zip(self.param_names, master_params):
            state[name] = value.detach().float() if self.use_fp16 else value.detach()
        return state

    def state_dict_to_master_params(self, state_dict: dict) -> list:
        """The parameter values of a state dict, in master-parameter order."""
        return [state_dict[name].float() if self.use_fp16 else state_dict[name] for name in self.param_names]

    def load_master_params(self, values) -> None:
        """Set master (and model) parameters from a list of tensors."""
        with torch.no_grad():
            for master, param, value in zip(self.master_params, self.model_params, values):
                master.copy_(value)
                if master is not param:
                    param.copy_(value.to(param.dtype))
