"""Importing the package changes nothing global."""

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
