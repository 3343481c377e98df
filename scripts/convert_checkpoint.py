"""Convert an NVlabs network pickle (EDM2's network-snapshot or phema .pkl) into a plain weights file that every
sampling script loads, without running any code from the pickle.

    python scripts/convert_checkpoint.py edm2-img64-s-1073741-0.075.pkl models/edm2-img64-s.pt [--key ema]

Writes OUT (.pt, or .safetensors by its name) and its entry (class and constructor arguments) in the args.json
beside it, which several converted networks can share; `image_sample.py --model_path OUT` then samples it like the
pickle itself.
"""

import argparse
import os

from guided_diffusion import cli, nvlabs


def main(argv: list[str] | None = None) -> None:
    parser = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickle", help="an NVlabs network pickle (.pkl)")
    parser.add_argument("out", help="the weights file to write (.pt or .safetensors)")
    parser.add_argument("--key", default="ema", help="the pickle's entry holding the network (default ema)")
    args = parser.parse_args(argv)
    if not args.out.endswith((".pt", ".safetensors")):
        raise ValueError(f"{args.out}: the output must end in .pt or .safetensors")
    net = nvlabs.load_network_pickle(args.pickle, args.key)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    nvlabs.save_converted(net, args.out)
    count = sum(p.numel() for p in net.parameters())
    print(f"wrote {args.out} ({type(net).__name__}, {count / 1e6:.1f} M parameters) and args.json beside it")


if __name__ == "__main__":
    cli.run(main)
