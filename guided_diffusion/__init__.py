"""guided_diffusion: ADM diffusion models (Dhariwal & Nichol 2021), their training, sampling and guidance."""

import os
import platform

__version__ = "0.2.0"


def _pin_cpu_kernels() -> None:
    """Use ATen's AVX2 CPU kernels on x86 unless ATEN_CPU_CAPABILITY is set.

    The AVX-512 kernels round some elementwise ops differently, and a guided DDIM step at t = T-1 amplifies
    output differences by 1/sqrt(alpha_bar) ~ 2e4; with AVX2 kernels the float32 results equal the reference
    numbers on the AMD CPU they were checked on (on an Intel AVX-512 CPU one guided sample stays 1.19e-3 away;
    see the README). No speed difference to AVX-512 was measured. It takes effect only if torch has not run a
    CPU kernel yet.
    """
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")


_pin_cpu_kernels()
