"""Sample with classifier guidance: the gradient of a noisy classifier's log p(y | x_t, t), times
--classifier_scale, shifts the mean of each DDPM step (or corrects the score of each DDIM step).

    mpiexec -n N python scripts/classifier_sample.py --model_path MODEL.pt --classifier_path CLASSIFIER.pt \\
        --classifier_scale 1.0 $MODEL_FLAGS $CLASSIFIER_FLAGS [--classes 0,1,2]
"""


from guided_diffusion import cli, dist_util, logger, sampling
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)


def main():
    args = create_argparser().parse_args()
    explicit = sampling.explicit_flags()
    sampling.require_file(args.model_path, "model_path")
    sampling.require_file(args.classifier_path, "classifier_path")
    sampling.apply_checkpoint_args(args, args.model_path, model_and_diffusion_defaults(), explicit, "model_path")
    classifier_keys = [k for k in classifier_defaults() if k.startswith("classifier_")]
    saved = sampling.apply_checkpoint_args(args, args.classifier_path, classifier_keys, explicit, "classifier_path")
    check_classifier_matches(args, saved)
    dist_util.setup_dist()
    sampling.configure_logging("classifier_sample", args)

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    sampling.load_network(model, args.model_path, "model_path", args.use_fp16)
    logger.log("loading classifier...")
    classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
    sampling.load_network(classifier, args.classifier_path, "classifier_path", args.classifier_use_fp16)
    cond_fn = sampling.classifier_cond_fn(classifier, args.classifier_scale, args.use_bf16)

    logger.log("sampling...")
    writer = sampling.SampleWriter(logger.get_dir(), args.num_samples, args.image_size, args.image_size,
                                   with_labels=True)
    make_batch = sampling.image_batch_fn(model, diffusion, args, cond_fn=cond_fn)
    sampling.generate(writer, args.batch_size, make_batch, grid=args.grid)


def check_classifier_matches(args, saved):
    """A classifier trained here must match the model's image size, and a class-conditional model's label set
    (an unconditional model takes the classifier's labels)."""
    if not saved:
        return
    if not args.class_cond and "num_classes" in saved:
        args.num_classes = saved["num_classes"]
    for key, what in (("image_size", "image size"), ("num_classes", "number of classes")):
        if key in saved and saved[key] != getattr(args, key):
            raise ValueError(
                f"the classifier {args.classifier_path} was trained with {key} {saved[key]} but the model uses "
                f"{getattr(args, key)}: use a classifier of the model's {what}"
            )


def create_argparser():
    defaults = sampling.sampling_defaults()
    defaults.update(classifier_path="", classifier_scale=1.0)
    defaults.update(model_and_diffusion_defaults())
    defaults.update(classifier_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
