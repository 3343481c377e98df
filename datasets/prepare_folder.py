"""
Flatten a folder of class subfolders into class-prefixed file names.

The training loader reads a file's class from its name prefix before the first
"_", so ``root/<class>/<file>`` becomes ``out_dir/<class>_<file>`` (a file
already named ``<class>_...`` keeps its name). Files are hard-linked by default,
falling back to a copy where linking fails (e.g. across file systems).

    python datasets/prepare_folder.py my_images/train my_images_flat
"""

import argparse
import os
import shutil
import sys
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif")
MODES = ("link", "copy", "symlink")


class PrepareError(Exception):
    """A problem with the command's input that is reported as one line, exit status 2."""


class Summary(NamedTuple):
    """What prepare_folder did: class count, file count, and how many files each method placed."""

    classes: int
    files: int
    methods: Dict[str, int]


def is_image(name: str) -> bool:
    """Tell whether a file name has an extension the training loader reads."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_class_dirs(root: str) -> List[str]:
    """Return the sorted names of root's non-hidden subfolders, each one class."""
    if not os.path.isdir(root):
        raise PrepareError(f"no such folder: {root}")
    names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise PrepareError(f"no class subfolders in {root} (expected {root}/<class>/<image>)")
    return names


def class_names(dir_names: List[str], underscore_to: Optional[str] = None) -> Dict[str, str]:
    """Map folder names to class names; '_' is rejected, or replaced by underscore_to when given."""
    if underscore_to is not None and "_" in underscore_to:
        raise PrepareError(f"--underscore_to must not contain '_', got {underscore_to!r}")
    bad = [name for name in dir_names if "_" in name]
    if bad and underscore_to is None:
        raise PrepareError(
            f"class names must not contain '_' (the loader reads the class up to the first '_'): "
            f"{', '.join(bad)}; rename them or pass --underscore_to -"
        )
    mapping = {name: name.replace("_", underscore_to or "") for name in dir_names}
    repeated = sorted(name for name, n in Counter(mapping.values()).items() if n > 1)
    if repeated:
        raise PrepareError(f"several folders map to the same class name: {', '.join(repeated)}")
    return mapping


def plan_class(root: str, dir_name: str, class_name: str) -> List[Tuple[str, str]]:
    """List (source path, output name) for the images directly inside one class folder."""
    folder = os.path.join(root, dir_name)
    plan = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (entry.is_file() and is_image(entry.name)):
            continue
        rest = entry.name
        if rest.startswith(dir_name + "_"):
            rest = rest[len(dir_name) + 1 :]
        plan.append((entry.path, f"{class_name}_{rest}"))
    return plan


def plan_files(root: str, mapping: Dict[str, str]) -> List[Tuple[str, str]]:
    """List (source path, output name) for every class, warning about class folders without images."""
    plan = []
    for dir_name, class_name in mapping.items():
        class_plan = plan_class(root, dir_name, class_name)
        if not class_plan:
            print(f"warning: no images in class folder {dir_name} (skipped)", file=sys.stderr)
        plan.extend(class_plan)
    if not plan:
        raise PrepareError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in the class folders of {root}")
    repeated = sorted(name for name, n in Counter(name for _, name in plan).items() if n > 1)
    if repeated:
        raise PrepareError(f"several files would get the same output name: {', '.join(repeated[:5])}")
    return plan


def place_file(src: str, dest: str, mode: str) -> str:
    """Put src at dest by hard link (copy if linking fails), copy or symlink; return the method used."""
    if os.path.lexists(dest):
        os.remove(dest)
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dest)
        return "symlink"
    if mode == "link":
        try:
            os.link(src, dest)
            return "link"
        except OSError:
            pass
    shutil.copy2(src, dest)
    return "copy"


def check_out_dir(root: str, out_dir: str) -> None:
    """Reject an output folder inside the input folder, where it would look like another class."""
    root_real = os.path.realpath(root)
    out_real = os.path.realpath(out_dir)
    if os.path.commonpath([root_real, out_real]) == root_real:
        raise PrepareError(f"out_dir {out_dir} must not be inside the input folder {root}")


def prepare_folder(
    root: str, out_dir: str, mode: str = "link", underscore_to: Optional[str] = None
) -> Summary:
    """Place every root/<class>/<image> as out_dir/<class>_<image> and summarize what was done."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mapping = class_names(find_class_dirs(root), underscore_to)
    check_out_dir(root, out_dir)
    plan = plan_files(root, mapping)
    os.makedirs(out_dir, exist_ok=True)
    methods = Counter(place_file(src, os.path.join(out_dir, name), mode) for src, name in plan)
    classes = len({name.split("_", 1)[0] for _, name in plan})
    return Summary(classes=classes, files=len(plan), methods=dict(methods))


def create_argparser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Turn root/<class>/<image> into out_dir/<class>_<image>, the layout the "
        "training loader reads class labels from. Only .jpg/.jpeg/.png/.gif files directly "
        "inside each class folder are used.",
    )
    parser.add_argument("root", help="folder holding one subfolder per class")
    parser.add_argument("out_dir", help="flat output folder (created if missing)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="link",
        help="link: hard link, copying where that fails (default); copy; symlink (absolute)",
    )
    parser.add_argument(
        "--underscore_to",
        default=None,
        metavar="TEXT",
        help="replace '_' in class folder names by TEXT (e.g. '-'); without it such names "
        "are an error",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run from the command line, reporting input problems as one line with exit status 2."""
    args = create_argparser().parse_args(argv)
    try:
        summary = prepare_folder(args.root, args.out_dir, args.mode, args.underscore_to)
    except PrepareError as exc:
        print(f"prepare_folder.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    methods = ", ".join(f"{method}: {n}" for method, n in sorted(summary.methods.items()))
    print(f"{summary.classes} classes, {summary.files} files in {args.out_dir} ({methods})")


if __name__ == "__main__":
    main()
