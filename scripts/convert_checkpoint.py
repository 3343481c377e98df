"""Convert an NVlabs network pickle (EDM2's network-snapshot or phema .pkl) into a plain weights file that every
sampling script loads, without running any code from the pickle; or export an EDM2 network trained here
(--arch edm2: a checkpoint of the run, with its args.json) in the same format.

    python scripts/convert_checkpoint.py edm2-img64-s-1073741-0.075.pkl models/edm2-img64-s.pt [--key ema]
    python scripts/convert_checkpoint.py runs/image_train-.../phema_recon_0.070_004000.pt models/mine.pt

Writes OUT (.pt, or .safetensors by its name) and its entry (class and constructor arguments) in the networks.json
beside it, which several converted networks can share; `image_sample.py --model_path OUT` then samples it like the
pickle itself.
"""

import argparse
import os

from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.loading import nvlabs
from guided_diffusion.loading.checkpoint import load_state_dict
from guided_diffusion.loading.checkpoint_flags import checkpoint_args, require_file


def trained_edm2_network(path: str):
    """The EDM2 network of a checkpoint trained here with --arch edm2 (flags from its args.json)."""
    require_file(path, "checkpoint")
    saved = checkpoint_args(path) or {}
    if saved.get("arch") != "edm2":
        raise ValueError(f"{path}: neither an NVlabs pickle (.pkl) nor a checkpoint of an --arch edm2 training run "
                         "(its args.json)")
    defaults = sigma_space.architecture_defaults()
    flags = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults}})
    net = sigma_space.create_sigma_space_network(flags, create_adm=None)
    net.load_state_dict(load_state_dict(path))
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    parser = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickle", help="an NVlabs network pickle (.pkl), or a checkpoint of an --arch edm2 run")
    parser.add_argument("out", help="the weights file to write (.pt or .safetensors)")
    parser.add_argument("--key", default="ema", help="the pickle's entry holding the network (default ema)")
    args = parser.parse_args(argv)
    if not args.out.endswith((".pt", ".safetensors")):
        raise ValueError(f"{args.out}: the output must end in .pt or .safetensors")
    if args.pickle.endswith(".pkl"):
        net = nvlabs.load_network_pickle(args.pickle, args.key)
    else:
        net = trained_edm2_network(args.pickle)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    nvlabs.save_converted(net, args.out)
    count = sum(p.numel() for p in net.parameters())
    print(f"wrote {args.out} ({type(net).__name__}, {count / 1e6:.1f} M parameters) and networks.json beside it")


if __name__ == "__main__":
    cli.run(main)
