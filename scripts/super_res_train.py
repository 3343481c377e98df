"""Train a super-resolution model: large_size images conditioned on their area-downsampled small_size versions.

    mpiexec -n N python scripts/super_res_train.py --data_dir DIR --large_size 256 --small_size 64 $FLAGS

--objective edm trains the ADM upsampler in EDM's preconditioning with EDM's loss (the low-resolution input stays
a clean condition).
"""

import functools

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.image_datasets import class_flag_layer, load_superres_data
from guided_diffusion.script_util import (
    args_to_dict,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.train_util import train_diffusion_from_args


def main(argv: list[str] | None = None) -> None:
    parsed = create_argparser().parse_args(argv)
    cli.require_data_dir(parsed.data_dir)
    # The objective; --num_classes and class_names from the data. Frozen: the run reads these settings.
    args = cli.training_settings(parsed, argv, functools.partial(sigma_space.edm_flag_layer, allowed=("adm", "edm")),
                                 class_flag_layer)
    cli.start(args, "super_res_train")

    logger.log("creating model...")
    model, diffusion = sigma_space.create_training_network(
        args, lambda: sr_create_model_and_diffusion(**args_to_dict(args, sr_model_and_diffusion_defaults().keys())))
    model.to(dist_util.dev())

    def make_data(start_batch):
        return load_superres_data(
            data_dir=args.data_dir, batch_size=args.batch_size, large_size=args.large_size,
            small_size=args.small_size, class_cond=args.class_cond, random_crop=args.random_crop,
            random_flip=args.random_flip, skip_bad_images=args.skip_bad_images, num_classes=args.num_classes,
            seed=args.seed, num_workers=args.num_workers, start_batch=start_batch,
            class_names=getattr(args, "class_names", None),
        )

    train_diffusion_from_args(args, model, diffusion, make_data)


def create_argparser():
    return cli.make_parser(__doc__, sigma_space.upsampler_architecture_defaults(), cli.training_defaults())


if __name__ == "__main__":
    cli.run(main)
