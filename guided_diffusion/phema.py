"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Section 3 and Appendix C).

A power-function EMA of the training weights averages step t' with weight proportional to t'^gamma up to the
current time t (counted in images); its relative width is sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2
(gamma + 3))). Snapshots of two such EMAs taken during training can be combined linearly into the EMA of any other
width at any snapshot time: the coefficients solve the least-squares fit of the target profile by the stored
profiles, a linear system in their inner products, which have a closed form.
"""

from __future__ import annotations

import numpy as np


def exp_to_std(exp) -> np.ndarray:
    """sigma_rel of the power-function profile with exponent gamma."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def std_to_exp(std) -> np.ndarray:
    """The exponent gamma of the profile of width sigma_rel: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2 (exp_to_std inverted)."""
    std = np.float64(std)
    inverse_squares = std.reshape(-1) ** -2
    roots = [np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max() for s in inverse_squares]
    return np.float64(roots).reshape(std.shape)


def power_function_beta(std, t_next, t_delta) -> np.ndarray:
    """The EMA decay of one training step that keeps a power-function profile of width std: the average at
    t_next (images) is beta * average + (1 - beta) * weights, beta = (1 - t_delta / t_next)^(gamma + 1)."""
    return (1 - np.float64(t_delta) / np.float64(t_next)) ** (std_to_exp(std) + 1)


def power_function_correlation(a_ofs, a_std, b_ofs, b_std) -> np.ndarray:
    """Inner product of two normalized power-function profiles (times a_ofs, b_ofs; widths a_std, b_std):
    (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) max(t_a, t_b)) times (t_a / t_b)^g_b if t_a < t_b, else (t_b / t_a)^g_a."""
    a_exp, b_exp = std_to_exp(a_std), std_to_exp(b_std)
    a_ofs, b_ofs = np.float64(a_ofs), np.float64(b_ofs)
    ratio = np.where(a_ofs < b_ofs, (a_ofs / b_ofs) ** b_exp, (b_ofs / a_ofs) ** a_exp)
    return (a_exp + 1) * (b_exp + 1) * ratio / ((a_exp + b_exp + 1) * np.maximum(a_ofs, b_ofs))


def solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std) -> np.ndarray:
    """The [in, out] matrix whose column j combines the stored EMAs (times in_ofs, widths in_std) into the EMA of
    time out_ofs[j] and width out_std[j]: least squares on the profiles, columns summing to 1."""
    in_ofs, in_std = (np.float64(v).reshape(-1) for v in np.broadcast_arrays(in_ofs, in_std))
    out_ofs, out_std = (np.float64(v).reshape(-1) for v in np.broadcast_arrays(out_ofs, out_std))
    gram = power_function_correlation(in_ofs[:, None], in_std[:, None], in_ofs[None, :], in_std[None, :])
    target = power_function_correlation(in_ofs[:, None], in_std[:, None], out_ofs[None, :], out_std[None, :])
    coefficients = np.linalg.solve(gram, target)
    return coefficients / coefficients.sum(axis=0)
