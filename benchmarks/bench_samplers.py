"""Sampler accuracy against network evaluations (NFE) on data whose exact denoiser is known in closed form.

    python benchmarks/bench_samplers.py [--num_samples 10000] [--out benchmarks]

The data is a Gaussian mixture in 4 dimensions with narrow, anisotropic components. Its exact eps-prediction,
E[eps | x_t], is wrapped as the network of a discrete 1000-step cosine GaussianDiffusion (eps-predicting, as
ADM's models), so every sampler runs through the project's own code (sampler_dispatch.run_sampler) with the model's
errors taken out: what remains is the sampler's discretization error (plus sampling noise, shown as the floor:
the same metrics for sets of true samples, averaged over 5 sets).

Metrics, on num_samples samples from the same seeds for every sampler: sliced Wasserstein-1 distance to the true
distribution (mean over 256 random directions of the 1-d W1 to the quantiles of 200k true samples), the error
of the mean (L2) and of the covariance (Frobenius), both against the exact moments of the mixture, and for the
deterministic samplers the RMS distance to the exact ODE solution from the same noise, which has no sampling
noise. NFE is counted at the network. Further tables: Heun at 35 NFE with one choice changed at a time
(rounding to trained levels, sigma_max, rho, the levels), Heun's error on each of its steps alone, and Heun-35
against DDIM-100 on other random mixtures, with one scale of detail or detail at every scale.
Writes samplers_accuracy.png and RESULTS_samplers.md to --out and prints the tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.sampling import samplers
from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.dispatch import SamplerOptions, noise_levels, run_sampler

STEPS = 1000
DIM = 4
CHURN = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0)
NFES = (10, 15, 25, 35, 50, 100, 250)


class GaussianMixture:
    """sum_k w_k N(mu_k, C_k) with C_k = Q_k diag(lam_k) Q_k^T; all sums in float64.

    Means uniform in [-0.7, 0.7]^4; component standard deviations sqrt(lam) uniform in [0.01, 0.11] (one scale,
    the default), or with multiscale=True log-uniform in [0.002, 0.5], structure at every noise level as in
    images (whose spectra fall off as a power law)."""

    def __init__(self, seed: int = 0, components: int = 8, multiscale: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        self.weights /= self.weights.sum()
        self.means = (torch.rand(components, DIM, generator=g, dtype=torch.float64) * 1.4 - 0.7)
        self.q = torch.linalg.qr(torch.randn(components, DIM, DIM, generator=g, dtype=torch.float64))[0]
        u = torch.rand(components, DIM, generator=g, dtype=torch.float64)
        std = torch.exp(math.log(0.002) + u * math.log(0.5 / 0.002)) if multiscale else 0.01 + 0.1 * u
        self.lam = std**2

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, DIM, generator=g, dtype=torch.float64) * self.lam[k].sqrt()
        return self.means[k] + torch.einsum("nij,nj->ni", self.q[k], z)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact mean and covariance."""
        covs = self.q @ torch.diag_embed(self.lam) @ self.q.transpose(1, 2)
        mean = self.weights @ self.means
        centred = self.means - mean
        cov = torch.einsum("k,kij->ij", self.weights, covs + centred[:, :, None] * centred[:, None, :])
        return mean, cov

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_0 + sigma n = x]: the posterior-weighted Wiener estimates of the components."""
        var = self.lam[None] + sigma[:, None, None] ** 2  # [N, K, D] in each component's eigenbasis
        z = torch.einsum("kji,nkj->nki", self.q, x[:, None, :] - self.means[None])
        log_p = -0.5 * (z**2 / var + var.log()).sum(-1) + self.weights.log()[None]
        resp = torch.softmax(log_p, dim=1)
        shrunk = torch.einsum("kij,nkj->nki", self.q, self.lam[None] / var * z) + self.means[None]
        return (resp[:, :, None] * shrunk).sum(1)


def eps_model(mixture: GaussianMixture, base: gd.GaussianDiffusion):
    """The exact eps-prediction at the base process's (possibly fractional) timestep t, as a network would."""
    log_levels = torch.from_numpy(np.log(np.sqrt((1 - base.alphas_cumprod) / base.alphas_cumprod)))

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double().clamp(0, STEPS - 1)
        lower = t.floor().long().clamp(max=STEPS - 2)
        sigma = torch.exp(log_levels[lower] + (t - lower) * (log_levels[lower + 1] - log_levels[lower]))
        x = x_t.double() * (sigma[:, None] ** 2 + 1).sqrt()
        return ((x - mixture.denoise(x, sigma)) / sigma[:, None]).float()

    return model


class Truth:
    """What the samples are compared with: the exact moments, and sorted projections of 200k true samples."""

    def __init__(self, mixture: GaussianMixture):
        self.mean, self.cov = mixture.moments()
        self.directions = torch.nn.functional.normalize(
            torch.randn(256, DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=1)
        self.sorted_projections = (mixture.sample(200_000, seed=1) @ self.directions.T).sort(0).values

    def sliced_w1(self, samples: torch.Tensor) -> float:
        """Mean over directions of W1 between the projected samples and the true quantiles."""
        n, total = len(samples), len(self.sorted_projections)
        levels = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * total).long()
        projected = (samples @ self.directions.T).sort(0).values
        return float((projected - self.sorted_projections[levels]).abs().mean())


def metrics(samples: torch.Tensor, truth: Truth) -> dict:
    samples = samples.double()
    mean, cov = truth.mean, truth.cov
    return {"sw": truth.sliced_w1(samples),
            "mean": float((samples.mean(0) - mean).norm()),
            "cov": float((torch.cov(samples.T) - cov).norm())}


def options_for(name: str, nfe: int) -> tuple[SamplerOptions, str]:
    """Options and respacing for about nfe network evaluations (Heun-type samplers use 2N - 1). DDIM uses
    ADM's "ddimN" respacing, DDPM its evenly spaced "N"; the others the Karras schedule (EDM's defaults)."""
    if name in ("ddpm", "ddim"):
        respacing = f"ddim{nfe}" if name == "ddim" else str(nfe)
        return SamplerOptions(sampler=name, clip_denoised=False), respacing
    steps = (nfe + 1) // 2 if name in ("heun", "edm_stochastic") else nfe
    churn = CHURN if name == "edm_stochastic" else {}
    return SamplerOptions(sampler=name, steps=steps, clip_denoised=False, **churn), ""


class Bench:
    """The mixture, its exact eps-model on the 1000-step cosine process, and the truth to compare with."""

    def __init__(self, num_samples: int, mixture: GaussianMixture | None = None, floor: bool = True):
        self.num_samples = num_samples
        self.mixture = mixture or GaussianMixture()
        self.betas = gd.get_named_beta_schedule("cosine", STEPS)
        self.kinds = dict(model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.FIXED_LARGE,
                          loss_type=gd.LossType.MSE)
        self.model = eps_model(self.mixture, gd.GaussianDiffusion(betas=self.betas, **self.kinds))
        self.truth = Truth(self.mixture)
        # x at the start level is z sqrt(sigma^2 + 1), z the same per-sample draws run_sampler takes.
        self.start_noise = SampleRNG(range(num_samples)).randn((num_samples, DIM), dtype=torch.float64)
        self.exact = {}
        if floor:
            floors = [metrics(self.mixture.sample(num_samples, seed=seed), self.truth) for seed in range(3, 8)]
            self.floor = {k: sum(f[k] for f in floors) / len(floors) for k in floors[0]}

    def diffusion(self, respacing: str) -> SpacedDiffusion:
        return SpacedDiffusion(use_timesteps=space_timesteps(STEPS, respacing or [STEPS]), betas=self.betas,
                               **self.kinds)

    def exact_solution(self, sigma_start: float) -> torch.Tensor:
        """The probability-flow ODE solved from each start noise at sigma_start to sigma = 0 with 600
        DPM-Solver++(2M) steps on fractional timesteps (600 vs 1200 steps differ by ~1e-4 RMS)."""
        if sigma_start not in self.exact:
            denoiser = Denoiser(self.diffusion(""), self.model, fractional=True)
            sigmas = samplers.append_zero(samplers.karras_sigmas(600, denoiser.sigma_min, sigma_start))
            x = self.start_noise * math.sqrt(sigma_start**2 + 1)
            self.exact[sigma_start] = samplers.sample_dpmpp_2m(denoiser, x, sigmas)
        return self.exact[sigma_start]

    def ode_error(self, samples: torch.Tensor, sigma_start: float) -> float:
        """RMS distance of a deterministic sampler's samples to the exact ODE solutions from the same noise:
        its discretization error without sampling noise (an upper bound on W2 to what the exact ODE yields)."""
        return float((samples.double() - self.exact_solution(sigma_start)).norm(dim=1).pow(2).mean().sqrt())

    def measure(self, options: SamplerOptions, respacing: str = "", fractional: bool = False) -> dict:
        """Metrics and NFE of one sampler run on seeds 0..num_samples-1."""
        diffusion = self.diffusion(respacing)
        calls = []

        def model(x, t):
            calls.append(1)
            return self.model(x, t)

        rng = SampleRNG(range(self.num_samples))
        shape = (self.num_samples, DIM)
        denoiser = Denoiser(diffusion, model, fractional=fractional)
        start_sigma = denoiser.sigma_max if options.name in ("ddpm", "ddim") else float(
            noise_levels(denoiser, options)[0])
        start = time.perf_counter()
        if fractional:  # run_sampler's Heun path with the denoiser's fractional timesteps
            sigmas = noise_levels(denoiser, options)
            x = rng.randn(shape, dtype=torch.float64) * math.sqrt(float(sigmas[0]) ** 2 + 1)
            samples = samplers.sample_heun(denoiser, x, sigmas)
        else:
            samples = run_sampler(diffusion, model, shape, {}, rng, options)
        seconds = time.perf_counter() - start
        deterministic = options.name in ("euler", "heun", "dpmpp_2m") or (options.name == "ddim" and options.eta == 0)
        ode = self.ode_error(samples, start_sigma) if deterministic else math.nan
        return {"nfe": len(calls), "seconds": seconds, "ode": ode, **metrics(samples, self.truth)}


def run(bench: Bench) -> list[dict]:
    rows = []
    for name in ("ddpm", "ddim", "euler", "dpmpp_2m", "heun", "edm_stochastic"):
        for nfe in NFES:
            options, respacing = options_for(name, nfe)
            row = {"sampler": name, "steps": f"respacing {respacing}" if respacing else f"Karras, N={options.steps}",
                   **bench.measure(options, respacing)}
            rows.append(row)
            print(f"{name:15s} nfe {row['nfe']:4d}  sw {row['sw']:.4f}  mean {row['mean']:.4f}  "
                  f"cov {row['cov']:.4f}  ({row['seconds']:.1f} s)", flush=True)
    return rows


def heun_variants(bench: Bench) -> list[dict]:
    """Heun at 35 NFE (N = 18) with one choice changed at a time, to see where its error comes from."""
    heun = dict(sampler="heun", steps=18, clip_denoised=False)
    variants = [
        ("EDM defaults: Karras rho 7, sigma 0.0064..80, rounded to trained levels", SamplerOptions(**heun), "", False),
        ("fractional timesteps (no rounding)", SamplerOptions(**heun), "", True),
        ("sigma_max 20", SamplerOptions(**heun, sigma_max=20.0), "", False),
        ("rho 12", SamplerOptions(**heun, rho=12.0), "", False),
        ("the model's levels of respacing ddim18", SamplerOptions(**heun, sigma_schedule="model"), "ddim18", False),
        ("heun at 49 NFE (N = 25), EDM defaults", SamplerOptions(**{**heun, "steps": 25}), "", False),
        ("dpmpp_2m at 35 NFE, EDM defaults", SamplerOptions(sampler="dpmpp_2m", steps=35, clip_denoised=False), "",
         False),
    ]
    rows = []
    for label, options, respacing, fractional in variants:
        rows.append({"variant": label, **bench.measure(options, respacing, fractional)})
        print(f"{label}: nfe {rows[-1]['nfe']} sw {rows[-1]['sw']:.4f} cov {rows[-1]['cov']:.4f}", flush=True)
    return rows


def local_errors(bench: Bench, sigmas: torch.Tensor) -> list[dict]:
    """Heun's error on each step alone: one step from the exact trajectory at sigmas[i] against 200 small steps
    over the same interval, on every sample. Shows at which noise levels a schedule spends too few steps."""
    denoiser = Denoiser(bench.diffusion(""), bench.model, fractional=True)
    x = bench.start_noise * math.sqrt(float(sigmas[0]) ** 2 + 1)
    rows = []
    for high, low in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        fine = torch.exp(torch.linspace(math.log(high), math.log(max(low, 1e-4)), 200, dtype=torch.float64))
        fine = fine if low > 0 else samplers.append_zero(fine)
        one_step = samplers.sample_heun(denoiser, x, torch.tensor([high, low], dtype=torch.float64))
        x = samplers.sample_heun(denoiser, x, fine)
        rows.append({"from": high, "to": low, "error": float((one_step - x).norm(dim=1).pow(2).mean().sqrt())})
    return rows


SWEEP = [("one scale (std 0.01-0.11)", False), ("multiscale (std 0.002-0.5)", True)]


def sweep(num_samples: int, seeds: range) -> list[dict]:
    """Heun at 35 NFE against DDIM at 100 (and DPM-Solver++(2M) at 35) on other random mixtures of both kinds."""
    contenders = [("heun", *options_for("heun", 35)), ("ddim", *options_for("ddim", 100)),
                  ("dpmpp_2m", *options_for("dpmpp_2m", 35))]
    rows = []
    for family, multiscale in SWEEP:
        for seed in seeds:
            bench = Bench(num_samples, GaussianMixture(seed, multiscale=multiscale), floor=False)
            row = {"family": family, "seed": seed}
            for name, options, respacing in contenders:
                row[name] = bench.measure(options, respacing)
            rows.append(row)
            print(f"{family} seed {seed}: " + ", ".join(
                f"{name} sw {row[name]['sw']:.4f} ode {row[name]['ode']:.4f}" for name, _, _ in contenders),
                flush=True)
    return rows


def plot(rows: list[dict], floor: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("sw", "sliced W1 to the data"), ("ode", "RMS error to the exact ODE solution"),
              ("mean", "mean error (L2)"), ("cov", "covariance error (Frobenius)"))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    for ax, (key, title) in zip(axes, panels):
        for index, name in enumerate(names):  # fixed colours: the ODE panel leaves out the stochastic samplers
            pts = [(r["nfe"], r[key]) for r in rows if r["sampler"] == name and not math.isnan(r[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{index}", label=name)
        if key in floor:
            ax.axhline(floor[key], color="gray", linestyle="--", label="floor (true samples)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("Samplers on a 4-d Gaussian mixture, exact eps-model of a 1000-step cosine process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def table(rows: list[dict], floor: dict, first: str) -> str:
    lines = [f"| {first} | NFE | sliced W1 | ODE error | mean error | cov error |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = r["variant"] if "variant" in r else f"{r['sampler']} ({r['steps']})"
        lines.append(f"| {name} | {r['nfe']} | {r['sw']:.4f} | {_num(r['ode'])} | {r['mean']:.4f} | {r['cov']:.4f} |")
    lines.append(f"| true samples (floor) | - | {floor['sw']:.4f} | - | {floor['mean']:.4f} | {floor['cov']:.4f} |")
    return "\n".join(lines)


def local_table(rows: list[dict]) -> str:
    total = sum(r["error"] for r in rows)
    lines = ["| step | sigma from | sigma to | one-step error | share |", "|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['from']:.4f} | {r['to']:.4f} | {r['error']:.5f} | {r['error'] / total:.0%} |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    lines = ["| mixture | seed | heun-35 sliced W1 | ddim-100 sliced W1 | dpmpp_2m-35 sliced W1 | heun-35 ODE error | "
             "ddim-100 ODE error | dpmpp_2m-35 ODE error |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['seed']} | " + " | ".join(
            f"{r[name][key]:.4f}" for key in ("sw", "ode") for name in ("heun", "ddim", "dpmpp_2m")) + " |")
    return "\n".join(lines)


def _find(rows: list[dict], name: str, nfe: int) -> dict:
    return next(r for r in rows if r["sampler"] == name and r["nfe"] == nfe)


def _wins(rows: list[dict], name: str, key: str) -> int:
    return sum(r[name][key] <= r["ddim"][key] for r in rows)


def verdict(rows: list[dict], swept: list[dict]) -> str:
    """Whether Heun at 35 NFE is at least as accurate as DDIM at 100 NFE, here and on the other mixtures."""
    heun, ddim = _find(rows, "heun", 35), _find(rows, "ddim", 100)
    met = heun["sw"] <= ddim["sw"] and heun["ode"] <= ddim["ode"]
    return (f"Goal (Heun at 35 NFE at least as accurate as DDIM at 100 NFE): {'met' if met else 'NOT met'} on the "
            f"main mixture: sliced W1 {heun['sw']:.4f} vs {ddim['sw']:.4f}, ODE error {heun['ode']:.4f} vs "
            f"{ddim['ode']:.4f}, covariance error {heun['cov']:.4f} vs {ddim['cov']:.4f}. On {len(swept)} other "
            f"mixtures Heun-35 is at least as accurate as DDIM-100 in sliced W1 on {_wins(swept, 'heun', 'sw')} and "
            f"in ODE error on {_wins(swept, 'heun', 'ode')}; DPM-Solver++(2M) at 35 NFE on "
            f"{_wins(swept, 'dpmpp_2m', 'sw')} and {_wins(swept, 'dpmpp_2m', 'ode')}.")


def _count(levels: torch.Tensor, low: float, high: float) -> int:
    return int(((levels >= low) & (levels <= high)).sum())


def analysis(bench: Bench, rows: list[dict], variants: list[dict], local: list[dict]) -> str:
    """Where each sampler first matches DDIM at 100 NFE, and where Heun's error comes from."""
    target = _find(rows, "ddim", 100)
    first = {}
    for name in ("ddpm", "euler", "dpmpp_2m", "heun", "edm_stochastic"):
        hits = [r["nfe"] for r in rows if r["sampler"] == name and r["sw"] <= target["sw"]]
        first[name] = f"{min(hits)} NFE" if hits else f"none of {NFES[0]}-{NFES[-1]} NFE"
    v = {r["variant"].split(":")[0].split(" (")[0]: r for r in variants}
    heun, churn = _find(rows, "heun", 35), _find(rows, "edm_stochastic", 35)
    rounded, fractional = v["EDM defaults"]["ode"], v["fractional timesteps"]["ode"]
    rounding = "is not the cause" if abs(fractional - rounded) <= 0.1 * rounded else "matters"
    churn_effect = "costs accuracy" if churn["sw"] > heun["sw"] else "helps"
    total = sum(r["error"] for r in local)
    worst = sorted(local, key=lambda r: -r["error"])[:4]
    low = [r for r in local if r["from"] < 0.12]
    heun_levels = torch.tensor([r["from"] for r in local])
    ddim_levels = Denoiser(bench.diffusion("ddim100"), bench.model).sigmas
    return (
        f"First NFE at which each sampler reaches DDIM-100's sliced W1 ({target['sw']:.4f}): "
        + ", ".join(f"{k} {n}" for k, n in first.items()) + ". "
        f"Rounding to the trained levels {rounding}: fractional timesteps give an ODE error of {fractional:.4f} "
        f"against {rounded:.4f}. Step placement is the cause: Heun's one-step errors along the exact trajectory (third "
        f"table) put {sum(r['error'] for r in worst) / total:.0%} of the total on the 4 steps between sigma "
        f"{min(r['to'] for r in worst):.2f} and {max(r['from'] for r in worst):.2f}, where this mixture's modes "
        f"(means within +-0.7) separate, and {sum(r['error'] for r in low) / total:.0%} on the {len(low)} steps "
        f"below sigma 0.12, where EDM's rho = 7 crowds its steps for the fine detail of images. Between sigma "
        f"0.2 and 2 Heun takes {_count(heun_levels, 0.2, 2)} of its 18 steps, DDIM-100 (uniform in the cosine "
        f"schedule's t) {_count(ddim_levels, 0.2, 2)} of its 100. sigma_max 20 "
        f"gives an ODE error of {v['sigma_max 20']['ode']:.4f}, rho 12 {v['rho 12']['ode']:.4f}. Churn (S_churn "
        f"{CHURN['s_churn']:g}) {churn_effect} here ({churn['sw']:.4f} against Heun's {heun['sw']:.4f} at 35 "
        f"NFE): the denoiser is exact, and churn's purpose in EDM is to correct a network's errors. EDM's 35-NFE "
        f"result is for CIFAR-10 networks trained with its own preconditioning; for the ADM ImageNet-64 checkpoint "
        f"it used 256 steps (511 NFE) with churn."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--sweep_seeds", type=int, default=6, help="other mixtures of each kind (seeds 1..N)")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    bench = Bench(args.num_samples)
    rows = run(bench)
    variants = heun_variants(bench)
    heun_sigmas = noise_levels(Denoiser(bench.diffusion(""), bench.model), SamplerOptions(sampler="heun", steps=18))
    local = local_errors(bench, heun_sigmas)
    swept = sweep(args.num_samples, range(1, args.sweep_seeds + 1))
    plot(rows, bench.floor, os.path.join(args.out, "samplers_accuracy.png"))
    command = f"python benchmarks/bench_samplers.py --num_samples {args.num_samples} --sweep_seeds {args.sweep_seeds}"
    text = (f"Command: `{command}` on {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
            f"python {sys.version.split()[0]}; {args.num_samples} samples per run.\n\n"
            f"{verdict(rows, swept)}\n\n{analysis(bench, rows, variants, local)}\n\n"
            f"{table(rows, bench.floor, 'sampler (time steps)')}\n\n"
            f"Heun at 35 NFE with one choice changed:\n\n{table(variants, bench.floor, 'variant')}\n\n"
            f"Heun at 35 NFE (EDM defaults), the error of each step alone:\n\n{local_table(local)}\n\n"
            f"Other mixtures (seeds 1-{args.sweep_seeds} of each kind; no floor computed):\n\n"
            f"{sweep_table(swept)}\n")
    print(text)
    with open(os.path.join(args.out, "RESULTS_samplers.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
