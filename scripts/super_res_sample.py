"""Upsample a batch of base samples (an npz from image_sample.py or classifier_sample.py) with a
super-resolution model.

    mpiexec -n N python scripts/super_res_sample.py --model_path 64_256_upsampler.pt \\
        --base_samples samples_10000x64x64x3.npz $SR_MODEL_FLAGS [--timestep_respacing 250]

Labels in the base file (arr_1) condition a class-conditional upsampler. Sample i upsamples base image
i % (number of base images) with noise from --seed + i.
"""


from guided_diffusion import cli, dist_util, logger, sampling
from guided_diffusion.script_util import (
    args_to_dict,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)


def main():
    args = create_argparser().parse_args()
    sampling.require_file(args.model_path, "model_path")
    sampling.apply_checkpoint_args(args, args.model_path, sr_model_and_diffusion_defaults(),
                                   sampling.explicit_flags(), "model_path")
    base = sampling.BaseSamples(args.base_samples, args.small_size, need_labels=args.class_cond)
    dist_util.setup_dist()
    sampling.configure_logging("super_res_sample", args)

    logger.log("creating model...")
    model, diffusion = sr_create_model_and_diffusion(
        **args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
    sampling.load_network(model, args.model_path, "model_path", args.use_fp16)

    logger.log("upsampling...")
    writer = sampling.SampleWriter(logger.get_dir(), args.num_samples, args.large_size, args.large_size,
                                   with_labels=args.class_cond)
    sampling.generate(writer, args.batch_size, sampling.super_res_batch_fn(model, diffusion, args, base),
                      grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    defaults.update(base_samples="")
    defaults.update(sr_model_and_diffusion_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
