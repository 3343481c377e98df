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
for module in pkgutil.walk_packages(guided_diffusion.__path__, "guided_diffusion."):
    importlib.import_module(module.name)
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


def _module_files() -> dict:
    """{dotted module name under guided_diffusion (a package by its own name, the root as ""): its file}."""
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        if "__pycache__" in folder:
            continue
        rel = os.path.relpath(folder, PACKAGE)
        prefix = "" if rel == "." else rel.replace(os.sep, ".")
        for name in names:
            if name.endswith(".py"):
                stem = name[:-3]
                dotted = prefix if stem == "__init__" else (f"{prefix}.{stem}" if prefix else stem)
                files[dotted] = os.path.join(folder, name)
    return files


def _imports() -> dict:
    """{module: [(imported package module, at module level?)]} of guided_diffusion (dotted names, subpackages
    included), from the source: imports inside functions and under TYPE_CHECKING count too. Also {module:
    [external names imported in functions]}."""
    files = _module_files()
    edges, deferred = {}, {}

    def targets(base: str, names: list) -> list:
        """The package modules an import of `names` from `base` (dotted, "" for the package) reaches."""
        found = [f"{base}.{n}".lstrip(".") for n in names if f"{base}.{n}".lstrip(".") in files]
        return found or ([base] if base in files else [])

    for module, path in files.items():
        tree = ast.parse(open(path).read())
        top = {id(node) for node in tree.body}
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        edges[module], deferred[module] = [], []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
                found = targets(base, [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guided_diffusion"):
                base = node.module.partition(".")[2]
                found = targets(base, [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                found = [a.name.partition(".")[2] for a in node.names
                         if a.name.startswith("guided_diffusion.") and a.name.partition(".")[2] in files]
                if id(node) not in top:
                    deferred[module] += [a.name for a in node.names if not a.name.startswith("guided_diffusion")]
            else:
                if isinstance(node, ast.ImportFrom) and id(node) not in top:
                    deferred[module].append(node.module)
                continue
            edges[module] += [(name, id(node) in top) for name in found if name != module]
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
                ("nvlabs", "resolve_preset"), ("sampling.pipeline", "load_module_weights"), ("sampling.pipeline", "BaseSamples"), ("samplers", "register"), ("attention", "set_attention_backend"),
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
                ("losses", "normal_kl"), ("guidance.compose", "broadcast"), ("guidance.compose", "per_sample"),
                ("guidance.compose", "CondFn"), ("cli.run", "make_parser"), ("cli.run", "RaisingParser"),
                ("cli.run", "clear_interrupted_writes")]


def test_original_module_paths_and_public_names_import_from_where_they_were():
    missing = []
    for module in ORIGINAL_MODULES:
        importlib.import_module("guided_diffusion." + module)
    for module, name in PUBLIC_NAMES:
        if not hasattr(importlib.import_module("guided_diffusion." + module), name):
            missing.append(f"guided_diffusion.{module}.{name}")
    assert missing == []


# Public paths whose code moved into a subpackage: thin re-exports of the same objects.
MOVED_PUBLIC = {"nvlabs": "loading.nvlabs", "edm": "networks.edm", "edm2": "networks.edm2", "phema": "training.phema",
                "samplers": "sampling.samplers", "attention": "networks.attention"}


def test_layout_shows_the_architecture():
    """At the top: the original's modules and the moved public paths only; everything else in a folder per job."""
    top = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")
    assert top == sorted(ORIGINAL_MODULES + list(MOVED_PUBLIC))
    folders = sorted(name for name in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py")))
    assert folders == ["cli", "guidance", "loading", "networks", "processes", "sampling", "training"]
    for old, new in MOVED_PUBLIC.items():
        shim = importlib.import_module(f"guided_diffusion.{old}")
        real = importlib.import_module(f"guided_diffusion.{new}")
        public = [name for name in vars(real) if not name.startswith("_")]
        assert public and all(getattr(shim, name) is getattr(real, name) for name in public), old
