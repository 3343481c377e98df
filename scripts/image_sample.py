"""Generate a large batch of image samples from a model and save them as a large numpy array (plus a PNG grid).

    mpiexec -n N python scripts/image_sample.py --model_path MODEL.pt $MODEL_FLAGS [--timestep_respacing 250]

The output, samples_{N}x{H}x{W}x3.npz in the log folder, is what evaluations/evaluator.py and
super_res_sample.py --base_samples read. Image i depends only on --seed + i.
"""


from guided_diffusion import cli, dist_util, logger, sampling
from guided_diffusion.script_util import (
    args_to_dict,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)


def main():
    args = create_argparser().parse_args()
    sampling.require_file(args.model_path, "model_path")
    sampling.apply_checkpoint_args(args, args.model_path, model_and_diffusion_defaults(),
                                   sampling.explicit_flags(), "model_path")
    dist_util.setup_dist()
    sampling.configure_logging("image_sample", args)

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    sampling.load_network(model, args.model_path, "model_path", args.use_fp16)

    logger.log("sampling...")
    writer = sampling.SampleWriter(logger.get_dir(), args.num_samples, args.image_size, args.image_size,
                                   with_labels=args.class_cond)
    sampling.generate(writer, args.batch_size, sampling.image_batch_fn(model, diffusion, args), grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    defaults.update(model_and_diffusion_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
