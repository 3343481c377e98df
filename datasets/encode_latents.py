"""
Encode an image dataset into VAE latents for latent training (EDM2's ImageNet 512x512 recipe).

Each image is center-cropped to --resolution as EDM2's ``dataset_tool.py convert --transform=center-crop-dhariwal``
does (ADM's crop: halve with a box filter while the short side is at least twice the target, resize with BICUBIC,
take the central square), then encoded by Stability AI's VAE (``guided_diffusion.networks.encoders.StabilityVAEEncoder``)
into its raw latents: the posterior mean and standard deviation, 8 float32 channels at 1/8 of the resolution. The
output has the layout of EDM2's ``dataset_tool.py encode``, so EDM2's own loader and this project's both read it:

    DEST/00000/img-mean-std-00000000.npy ...   one file per image, numbered in sorted source order
    DEST/dataset.json                          {"labels": [["00000/img-mean-std-00000000.npy", 3], ...]}

(DEST a folder, or DEST.zip: an uncompressed zip of the same). dataset.json also names the classes in label order
("class_names") and the VAE ("vae"); EDM2 reads only "labels".

The source is a folder of images (jpg/jpeg/png/gif, subfolders included) whose classes are its top-level folders
(ImageNet's train/<wnid>/<wnid>_<n>.JPEG) or the file names' prefixes before the first "_" (the layout
image_train.py reads), or a dataset in EDM2's layout (a zip, or a folder with dataset.json). A killed run resumes
where it stopped: each latent file is written atomically and finished ones are skipped (a zip is assembled from
the folder DEST.zip.partial at the end).

    python datasets/encode_latents.py imagenet/train imagenet-latents --resolution 512
    python datasets/encode_latents.py my_images my_latents.zip --resolution 256 --vae path/to/vae
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import zipfile

import numpy as np
from PIL import Image
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(HERE),) if p not in sys.path]

from guided_diffusion.networks.encoders import DEFAULT_VAE  # noqa: E402
from guided_diffusion.cli.fileio import atomic_write, read_json, remove_stale_temporaries  # noqa: E402
from guided_diffusion.image_datasets import IMAGE_EXTENSIONS, center_crop_arr, class_sort_key  # noqa: E402
from guided_diffusion.training.image_modes import to_rgb  # noqa: E402
from guided_diffusion.training.latent_datasets import LABELS_FILE, is_archive_dataset, read_archive_index  # noqa: E402

TRANSFORMS = ("center-crop-dhariwal", "none")
LABEL_MODES = ("auto", "folder", "prefix", "none")
STATE_FILE = ".encode_latents.json"  # the settings of a folder being written, checked when a run resumes


class EncodeError(Exception):
    """A problem with the command's input, reported as one line with exit status 2."""


class Source:
    """The images to encode: names (sorted), how to read them, their labels and the class names."""

    def __init__(self, root: str, names: list[str], labels: list[int] | None, class_names: list[str] | None,
                 zip_path: str | None = None):
        self.root, self.names, self.labels, self.class_names = root, names, labels, class_names
        self.zip_path, self._zip = zip_path, None

    def where(self, name: str) -> str:
        return f"{self.zip_path}:{name}" if self.zip_path else os.path.join(self.root, name)

    def read(self, name: str) -> bytes:
        if self.zip_path:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.zip_path)
            return self._zip.read(name)
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()


def output_name(index: int) -> str:
    """EDM2's name for the latents of the index-th image."""
    text = f"{index:08d}"
    return f"{text[:5]}/img-mean-std-{text}.npy"


def _is_image(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def _folder_labels(names: list[str], mode: str, root: str) -> tuple[list[int] | None, list[str] | None]:
    """Labels from the top-level folder ("folder") or the file-name prefix before the first "_" ("prefix")."""
    folders = [n.split("/", 1)[0] if "/" in n else None for n in names]
    prefixes = [os.path.basename(n).split("_", 1)[0] if "_" in os.path.basename(n) else "" for n in names]
    if mode == "auto":
        mode = "folder" if all(folders) else "prefix" if all(prefixes) else "none"
        if mode == "none":
            print(f"warning: {root}: images are neither all in class folders nor all class-prefixed "
                  "(<class>_<name>): writing no labels", file=sys.stderr)
    if mode == "none":
        return None, None
    classes = folders if mode == "folder" else prefixes
    missing = next((n for n, c in zip(names, classes) if not c), None)
    if missing is not None:
        how = "is not inside a class folder" if mode == "folder" else "has no class prefix (<class>_<name>)"
        raise EncodeError(f"--labels {mode}: {os.path.join(root, missing)} {how}")
    class_names = sorted(set(classes), key=class_sort_key)
    index = {c: i for i, c in enumerate(class_names)}
    return [index[c] for c in classes], class_names


def open_source(source: str, labels: str = "auto") -> Source:
    """The images of a folder, or of a dataset in EDM2's layout, with their labels."""
    if not os.path.exists(source):
        raise EncodeError(f"source not found: {source}")
    if is_archive_dataset(source):
        try:
            index = read_archive_index(source)
        except ValueError as e:
            raise EncodeError(str(e)) from None
        if index.kind != "pixel":
            raise EncodeError(f"{source} holds latents already (.npy files); expected images")
        if labels not in ("auto", "none"):
            raise EncodeError(f"--labels {labels}: {source} is in EDM2's layout, whose labels come from dataset.json")
        keep = labels == "auto" and index.labels is not None
        zip_path = source if os.path.isfile(source) else None
        return Source(source, index.files, index.labels if keep else None, index.class_names if keep else None,
                      zip_path)
    if not os.path.isdir(source):
        raise EncodeError(f"{source}: expected a folder of images, a zip or a folder with dataset.json")
    names, others = [], []
    for root, dirs, files in os.walk(source, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), source).replace(os.sep, "/")
            (names if _is_image(f) else others).append(rel)
    if not names:
        raise EncodeError(f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under {source}")
    if others:
        print(f"warning: ignoring {len(others)} files under {source} that are not images by name (e.g. "
              f"{others[0]})", file=sys.stderr)
    names.sort()
    label_list, class_names = _folder_labels(names, labels, source)
    return Source(source, names, label_list, class_names)


def load_pixels(source: Source, name: str, resolution: int, transform: str) -> np.ndarray:
    """One image as uint8 HWC RGB at resolution x resolution; a file that cannot be decoded, or one of the wrong
    size under --transform none, is an EncodeError naming it."""
    where = source.where(name)
    try:
        with Image.open(io.BytesIO(source.read(name))) as image:
            image.load()
            image = to_rgb(image)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise EncodeError(f"cannot read image {where}: {e}") from None
    if transform == "none":
        if image.size != (resolution, resolution):
            raise EncodeError(f"{where}: {image.size[0]}x{image.size[1]} pixels, but --transform none needs "
                              f"{resolution}x{resolution} images")
        return np.asarray(image)
    return center_crop_arr(image, resolution)


def _settings(args: argparse.Namespace, vae: str) -> dict:
    return {"source": os.path.abspath(args.source), "resolution": args.resolution, "transform": args.transform,
            "labels": args.labels, "vae": vae}


def _prepare_folder(folder: str, settings: dict) -> None:
    """Start or resume writing into `folder`: a folder with other content, or written with other settings, is
    refused (an EncodeError naming the setting)."""
    state_path = os.path.join(folder, STATE_FILE)
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(state_path):
            raise EncodeError(f"{folder} is not empty and was not written by encode_latents.py: use an empty or new "
                              "folder")
        saved = read_json(state_path, "settings file of encode_latents.py")
        changed = [f"--{k} {saved.get(k)!r} (now {v!r})" for k, v in settings.items() if saved.get(k) != v]
        if changed:
            raise EncodeError(f"{folder} was started with other settings: resume it with {', '.join(changed)}, "
                              "or use another destination")
        remove_stale_temporaries(folder, depth=1)
        return
    data = json.dumps(settings, indent=1).encode()
    atomic_write(state_path, lambda f: f.write(data))


def _save_npy(path: str, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_dataset(args: argparse.Namespace) -> str:
    """Encode args.source into args.dest (resuming a folder in progress); returns a one-line summary."""
    import torch

    from guided_diffusion.networks.encoders import StabilityVAEEncoder

    if args.resolution < 8 or args.resolution % 8:
        raise EncodeError(f"--resolution {args.resolution}: expected a positive multiple of 8 (the VAE "
                          "downsamples by 8)")
    if args.batch_size < 1 or args.max_images < 0:
        raise EncodeError("--batch_size must be positive and --max_images non-negative")
    to_zip = args.dest.lower().endswith(".zip")
    if to_zip and os.path.exists(args.dest):
        raise EncodeError(f"{args.dest} already exists: remove it to encode again")
    if not to_zip and os.path.isfile(args.dest):
        raise EncodeError(f"{args.dest} is a file: expected a folder or a .zip name")
    source = open_source(args.source, args.labels)
    count = min(len(source.names), args.max_images or len(source.names))
    vae = os.path.abspath(os.path.expanduser(args.vae)) if os.path.isdir(os.path.expanduser(args.vae)) else args.vae
    folder = args.dest + ".partial" if to_zip else args.dest
    _prepare_folder(folder, _settings(args, vae))
    todo = [i for i in range(count) if not os.path.isfile(os.path.join(folder, output_name(i)))]
    skipped = set()
    if todo:
        device = _device(args.device)
        encoder = StabilityVAEEncoder(vae_name=vae, batch_size=args.batch_size)
        encoder.init(device)
        with tqdm(total=count, initial=count - len(todo), desc="encoding", unit="img", mininterval=1.0,
                  disable=not args.progress) as bar:
            for start in range(0, len(todo), args.batch_size):
                batch, pixels = [], []
                for i in todo[start:start + args.batch_size]:
                    try:
                        pixels.append(load_pixels(source, source.names[i], args.resolution, args.transform))
                        batch.append(i)
                    except EncodeError as e:
                        if not args.skip_bad_images:
                            raise EncodeError(f"{e}; pass --skip_bad_images True to skip bad images") from None
                        print(f"warning: skipping {e}", file=sys.stderr)
                        skipped.add(i)
                        bar.update(1)
                if not batch:
                    continue
                # Contiguous NCHW, as EDM2's tool feeds its VAE: with --batch_size 1 the files are EDM2's bit for bit.
                x = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pixels]).to(device)
                raw = encoder.encode_pixels(x).cpu().numpy().astype(np.float32)
                for i, latents in zip(batch, raw):
                    _save_npy(os.path.join(folder, output_name(i)), latents)
                bar.update(len(batch))
    done = [i for i in range(count) if i not in skipped and os.path.isfile(os.path.join(folder, output_name(i)))]
    if not done:
        raise EncodeError(f"no image of {args.source} could be encoded")
    labels = [[output_name(i), source.labels[i]] for i in done] if source.labels is not None else None
    meta = {"labels": labels, "class_names": source.class_names, "vae": vae}
    data = json.dumps(meta).encode()
    atomic_write(os.path.join(folder, LABELS_FILE), lambda f: f.write(data))
    shape = tuple(np.load(os.path.join(folder, output_name(done[0])), mmap_mode="r").shape)
    if to_zip:
        _write_zip(args.dest, folder, [output_name(i) for i in done])
        shutil.rmtree(folder)
    return (f"{len(done)} images encoded into {args.dest} ({count - len(todo)} done before, {len(skipped)} "
            f"skipped), latents of shape {shape}")


def _write_zip(dest: str, folder: str, names: list[str]) -> None:
    """An uncompressed zip of the latents and dataset.json, written atomically (EDM2 writes ZIP_STORED too)."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in [*names, LABELS_FILE]:
                archive.write(os.path.join(folder, name), name)

    atomic_write(dest, write)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def create_argparser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder of images (class folders or class-prefixed names), or a dataset in "
                        "EDM2's layout (zip, or folder with dataset.json)")
    parser.add_argument("dest", help="output folder, or a .zip file")
    parser.add_argument("--resolution", type=int, default=512, help="crop size in pixels (default 512: 64x64 "
                        "latents)")
    parser.add_argument("--vae", default=DEFAULT_VAE, metavar="PATH_OR_NAME", help="Hugging Face hub name or a "
                        f"directory written by AutoencoderKL.save_pretrained (default {DEFAULT_VAE})")
    parser.add_argument("--transform", choices=TRANSFORMS, default="center-crop-dhariwal",
                        help="center-crop-dhariwal (default): ADM's crop, as EDM2; none: images must already be "
                        "resolution x resolution")
    parser.add_argument("--labels", choices=LABEL_MODES, default="auto", help="classes from the top-level folder, "
                        "the file-name prefix, or none (auto: folder, else prefix, else none)")
    parser.add_argument("--max_images", type=int, default=0, help="encode only the first N images (0: all)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per VAE call (default 1, as EDM2: each "
                        "file is then independent of how the run was split; larger is faster and changes the last "
                        "bits)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--skip_bad_images", type=_bool, default=False, metavar="True|False",
                        help="skip images that cannot be read (with a warning) instead of stopping")
    parser.add_argument("--progress", type=_bool, default=True, metavar="True|False", help="show a progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run from the command line; problems with the input are one line on stderr with exit status 2."""
    args = create_argparser().parse_args(argv)
    try:
        summary = encode_dataset(args)
    except (EncodeError, ValueError, ImportError, OSError) as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"encode_latents.py: error: {message}", file=sys.stderr)
        sys.exit(2)
    print(summary)


if __name__ == "__main__":
    main()
