"""Train a diffusion model on a folder of images.

    mpiexec -n N python scripts/image_train.py --data_dir DIR $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS
    (or torchrun --nproc_per_node N ..., or plain python)

With --class_cond True --class_dropout_prob 0.1 the model also learns the unconditional model (label dropout),
for classifier-free guidance at sampling time (image_sample.py --cfg_scale).

EDM's and EDM2's recipes: --objective edm trains the ADM network in EDM's preconditioning with EDM's loss;
--arch edm2 [--edm2_preset xs|s|m|l|xl] trains EDM2's network with its loss and learned uncertainty (Adam betas
0.9,0.99; add --lr_ref_images/--lr_rampup_images for its learning-rate schedule). With --phema_stds 0.05,0.10
scripts/reconstruct_ema.py picks the EMA length afterwards. --edm2_preset img512-xs .. img512-xxl (and img64-xs ..
img64-xl) set EDM2's full presets: width, dropout, learning rate and its decay, noise levels.

Latents (EDM2's ImageNet 512x512 recipe): --arch edm2 --encoder stability_vae --data_dir LATENTS trains on a
dataset written by datasets/encode_latents.py (or EDM2's dataset_tool.py encode), drawing a fresh sample of each
image's VAE posterior per batch; --vae names the VAE for decoding (default: the one the dataset names).

Control conditioning (control.py, with --objective edm): --random_crop True --random_resize 0.5,1 --control_cond
crop,flip,size records each image's augmentation and tells the network; --control_dropout_prob trains the null
record for --control_cfg_scale; --class_attention True feeds the label to the attention layers instead.
"""

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.image_datasets import class_flag_layer, load_data, parse_random_resize
from guided_diffusion.training.latent_training import latent_defaults, latent_flag_layer, spelled_out_vae, wrap_data
from guided_diffusion.script_util import (
    args_to_dict,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    null_label,
)
from guided_diffusion.train_util import train_diffusion_from_args


def main(argv: list[str] | None = None) -> None:
    parsed = create_argparser().parse_args(argv)
    cli.require_data_dir(parsed.data_dir)
    # The objective and EDM2's preset; --num_classes and class_names from the data; --encoder against the data,
    # the VAE and the encoder for args.json. Frozen: the run reads these settings.
    args = cli.training_settings(parsed, argv, sigma_space.edm_flag_layer, class_flag_layer, latent_flag_layer,
                                 spell_out=spelled_out_vae)
    cli.start(args, "image_train")

    logger.log("creating model and diffusion...")
    model, diffusion = sigma_space.create_training_network(
        args, lambda: create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys())))
    model.to(dist_util.dev())

    def make_data(start_batch):
        return wrap_data(args, load_data(
            data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
            class_cond=args.class_cond, random_crop=args.random_crop, random_flip=args.random_flip,
            skip_bad_images=args.skip_bad_images, num_classes=args.num_classes, seed=args.seed,
            num_workers=args.num_workers, start_batch=start_batch,
            random_resize=parse_random_resize(args.random_resize), min_crop_frac=args.min_crop_frac,
            with_control=bool(args.control_cond), class_names=getattr(args, "class_names", None),
        ), dist_util.dev(), dist_util.get_rank())

    train_diffusion_from_args(args, model, diffusion, make_data, label_dropout=args.class_dropout_prob,
                              null_label=null_label(args.num_classes, args.class_dropout_prob),
                              control_dropout=args.control_dropout_prob)


def create_argparser():
    return cli.make_parser(__doc__, sigma_space.architecture_defaults(), cli.training_defaults(), latent_defaults())


if __name__ == "__main__":
    cli.run(main)
