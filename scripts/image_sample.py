"""Generate a large batch of image samples from a model and save them as a large numpy array (plus a PNG grid).

    mpiexec -n N python scripts/image_sample.py --model_path MODEL.pt $MODEL_FLAGS [--timestep_respacing 250]

Guidance: --cfg_scale W (a model trained with label dropout), --guide_model_path WEAKER.pt --guide_scale W
(autoguidance), each limited to noise levels lo < sigma <= hi by --cfg_interval / --guide_interval lo,hi.
The output, samples_{N}x{H}x{W}x3.npz in the log folder, is what evaluations/evaluator.py and
super_res_sample.py --base_samples read. Image i depends only on --seed + i.

EDM2's img512 networks (--preset edm2-img512-..., or their .pkl) work on latents: each batch is decoded to pixels
by the VAE their pickle names (Stability's, from the Hugging Face hub) or by --vae (a directory written by
AutoencoderKL.save_pretrained, or a hub name); this needs pip install -e ".[latent]". So do networks trained here on
latents (image_train.py --encoder stability_vae): their args.json records the channels, latent size and VAE.
"""


from guided_diffusion import logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.sampling.record import sample_record
from guided_diffusion.sampling.writer import SampleWriter, generate
from guided_diffusion.script_util import create_model_and_diffusion


def main(argv: list[str] | None = None) -> None:
    args = create_argparser().parse_args(argv)
    architecture = sigma_space.architecture_defaults()
    prepared = sampling.prepare("image_sample", args, architecture, argv)
    args = prepared.settings

    logger.log("creating model and diffusion...")
    model = sampling.load_model(create_model_and_diffusion, args, architecture, args.model_path, "model_path",
                                args.use_fp16)
    guidance = sampling.guidance_from_args(args, prepared, create_model_and_diffusion, architecture)

    logger.log("sampling...")
    writer = SampleWriter(logger.get_dir(), args.num_samples, args.image_size, args.image_size,
                          with_labels=args.class_cond, record=lambda: sample_record("image_sample", args))
    generate(writer, args.batch_size, sampling.image_batch_fn(model, args, guidance), grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    defaults.update(sampling.preset_flag_defaults())
    defaults.update(sampling.latent_flag_defaults())
    defaults.update(sigma_space.architecture_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
