"""Upsample a batch of base samples (an npz from image_sample.py or classifier_sample.py) with a
super-resolution model.

    mpiexec -n N python scripts/super_res_sample.py --model_path 64_256_upsampler.pt \\
        --base_samples samples_10000x64x64x3.npz $SR_MODEL_FLAGS [--timestep_respacing 250]

Labels in the base file (arr_1) condition a class-conditional upsampler. Sample i upsamples base image
i % (number of base images) with noise from --seed + i. A weaker upsampler can guide it (autoguidance:
--guide_model_path, --guide_scale, --guide_interval).
"""


from guided_diffusion import logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.sampling.record import sample_record
from guided_diffusion.sampling.writer import SampleWriter, generate
from guided_diffusion.script_util import sr_create_model_and_diffusion


def main(argv: list[str] | None = None) -> None:
    args = create_argparser().parse_args(argv)
    architecture = sigma_space.upsampler_architecture_defaults()
    base = None

    def read_base(settings):
        nonlocal base
        base = sampling.BaseSamples(settings.base_samples, settings.small_size, need_labels=settings.class_cond)

    prepared = sampling.prepare("super_res_sample", args, architecture, argv, size_flag="large_size",
                                checks=(read_base,))
    args = prepared.settings

    logger.log("creating model...")
    model = sampling.load_model(sr_create_model_and_diffusion, args, architecture, args.model_path, "model_path",
                                args.use_fp16)
    guidance = sampling.guidance_from_args(args, prepared, sr_create_model_and_diffusion, architecture)

    logger.log("upsampling...")
    writer = SampleWriter(logger.get_dir(), args.num_samples, args.large_size, args.large_size,
                          with_labels=args.class_cond, record=lambda: sample_record("super_res_sample", args))
    generate(writer, args.batch_size, sampling.super_res_batch_fn(model, args, base, guidance),
             grid=args.grid)


def create_argparser():
    defaults = sampling.upsampler_sampling_defaults()
    defaults.update(base_samples="")
    defaults.update(sigma_space.upsampler_architecture_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
