"""Importing the package changes nothing global."""

import ast
import importlib
import os
import subprocess
import sys

from launch import ROOT, script_env

CHECK = """
import os, pkgutil, importlib, torch
before = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), torch.backends.cudnn.benchmark)
import guided_diffusion
for module in pkgutil.iter_modules(guided_diffusion.__path__):
    importlib.import_module("guided_diffusion." + module.name)
after = (dict(os.environ), torch.get_num_threads(), torch.get_default_dtype(), torch.backends.cudnn.benchmark)
changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
print(changed, before[1:] == after[1:])
"""


def test_importing_every_module_changes_no_environment_variable_or_torch_setting():
    env = script_env()
    env.pop("ATEN_CPU_CAPABILITY", None)
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "True"], proc.stdout


PACKAGE = os.path.join(ROOT, "guided_diffusion")
# Imported inside functions because they are optional or heavy, so the package imports without them.
OPTIONAL = {"blobfile", "safetensors", "mpi4py", "diffusers", "tensorflow", "torch.utils.tensorboard", "numpy._core",
            "numpy.core"}


def _imports() -> dict:
    """{module: [(imported package module, at module level?)]} of guided_diffusion, from the source: imports
    inside functions and under TYPE_CHECKING count too. Also {module: [external names imported in functions]}."""
    modules = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py")}
    edges, deferred = {}, {}
    for module in modules:
        tree = ast.parse(open(os.path.join(PACKAGE, module + ".py")).read())
        top = {id(node) for node in tree.body}
        edges[module], deferred[module] = [], []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guided_diffusion"):
                parts = node.module.split(".")
                names = parts[1:2] or [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("guided_diffusion.")]
                if id(node) not in top:
                    deferred[module] += [a.name for a in node.names if not a.name.startswith("guided_diffusion")]
            else:
                if isinstance(node, ast.ImportFrom) and id(node) not in top:
                    deferred[module].append(node.module)
                continue
            edges[module] += [(name, id(node) in top) for name in names if name in modules]
    return edges, deferred


def test_no_import_cycles_and_package_imports_only_at_module_level():
    edges, deferred = _imports()
    inside = sorted(f"{m} -> {n}" for m, targets in edges.items() for n, at_top in targets if not at_top)
    assert inside == [], "package modules imported inside functions (or under TYPE_CHECKING)"
    outside = sorted(f"{m}: {n}" for m, names in deferred.items() for n in names
                     if not any(n == o or n.startswith(o + ".") for o in OPTIONAL))
    assert outside == [], "imports inside functions other than optional dependencies"
    state: dict = {}

    def visit(module, path):
        state[module] = "open"
        for target, _ in edges[module]:
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert len(state) == len(edges) > 40


# The original guided-diffusion's module paths and this project's documented public names.
ORIGINAL_MODULES = ["script_util", "unet", "gaussian_diffusion", "respace", "resample", "dist_util", "logger", "nn",
                    "fp16_util", "image_datasets", "train_util", "losses"]
PUBLIC_NAMES = [("nvlabs", "load_network_pickle"), ("edm2", "Precond"), ("edm", "EDMPrecond"),
                ("phema", "solve_posthoc_coefficients"), ("samplers", "SAMPLERS"), ("nvlabs", "EDM2_PRESETS"),
                ("nvlabs", "resolve_preset"), ("sampling", "load_module_weights"), ("sampling", "BaseSamples"), ("samplers", "register"),
                ("script_util", "create_model_and_diffusion"), ("script_util", "model_and_diffusion_defaults"),
                ("script_util", "create_classifier"), ("script_util", "sr_create_model_and_diffusion"),
                ("script_util", "add_dict_to_argparser"), ("script_util", "args_to_dict"),
                ("script_util", "default_channel_mult"), ("unet", "UNetModel"), ("unet", "SuperResModel"),
                ("unet", "EncoderUNetModel"), ("gaussian_diffusion", "GaussianDiffusion"),
                ("gaussian_diffusion", "get_named_beta_schedule"), ("respace", "SpacedDiffusion"),
                ("respace", "space_timesteps"), ("resample", "create_named_schedule_sampler"),
                ("dist_util", "setup_dist"), ("dist_util", "load_state_dict"), ("dist_util", "dev"),
                ("logger", "configure"), ("logger", "logkv"), ("nn", "timestep_embedding"),
                ("fp16_util", "MixedPrecisionTrainer"), ("image_datasets", "load_data"), ("train_util", "TrainLoop"),
                ("losses", "normal_kl"), ("guidance", "broadcast"), ("guidance", "per_sample"),
                ("guidance", "CondFn"), ("cli", "make_parser"), ("cli", "RaisingParser"),
                ("cli", "clear_interrupted_writes")]


def test_original_module_paths_and_public_names_import_from_where_they_were():
    missing = []
    for module in ORIGINAL_MODULES:
        importlib.import_module("guided_diffusion." + module)
    for module, name in PUBLIC_NAMES:
        if not hasattr(importlib.import_module("guided_diffusion." + module), name):
            missing.append(f"guided_diffusion.{module}.{name}")
    assert missing == []
