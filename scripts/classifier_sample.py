"""Sample with classifier guidance: the gradient of a noisy classifier's log p(y | x_t, t), times
--classifier_scale, shifts the mean of each DDPM step (or corrects the score of each DDIM step, or the denoiser
of the EDM-style samplers), optionally only for noise levels lo < sigma <= hi (--classifier_interval lo,hi).

    mpiexec -n N python scripts/classifier_sample.py --model_path MODEL.pt --classifier_path CLASSIFIER.pt \\
        --classifier_scale 1.0 $MODEL_FLAGS $CLASSIFIER_FLAGS [--classes 0,1,2]

Classifier-free guidance and autoguidance (see image_sample.py) combine with it.
"""


from guided_diffusion import logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.loading.checkpoint_flags import checkpoint_args, checkpoint_layer, explicit_flags, require_file
from guided_diffusion.sampling.record import sample_record
from guided_diffusion.sampling.writer import SampleWriter, generate
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
)


def main(argv: list[str] | None = None) -> None:
    args = create_argparser().parse_args(argv)
    architecture = sigma_space.architecture_defaults()

    def implied_by_classifier(settings) -> dict:
        require_file(settings.classifier_path, "classifier_path")
        keys = [k for k in classifier_defaults() if k.startswith("classifier_")]
        if sampling.is_nvlabs_pickle(settings.model_path) or sigma_space.uses_sigma_space(settings):
            # a model at continuous sigma: the classifier's own schedule maps sigma to its timesteps
            keys += ["noise_schedule", "diffusion_steps"]
        layer, saved = checkpoint_layer(settings.classifier_path, keys, vars(settings), explicit_flags(argv),
                                        "classifier_path")
        return {**layer, **sampling.match_classifier(settings, saved or {}, settings.classifier_path)}

    prepared = sampling.prepare("classifier_sample", args, architecture, argv, implied_by=(implied_by_classifier,))
    args = prepared.settings

    logger.log("creating model and diffusion...")
    model = sampling.load_model(create_model_and_diffusion, args, architecture, args.model_path, "model_path",
                                args.use_fp16)
    logger.log("loading classifier...")
    classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
    sampling.load_module_weights(classifier, args.classifier_path, "classifier_path", args.classifier_use_fp16)
    guidance = sampling.guidance_from_args(args, prepared, create_model_and_diffusion, architecture, classifier,
                                           sigma_space.classifier_conditioning(checkpoint_args(args.classifier_path)))

    logger.log("sampling...")
    writer = SampleWriter(logger.get_dir(), args.num_samples, args.image_size, args.image_size, with_labels=True,
                          record=lambda: sample_record("classifier_sample", args))
    generate(writer, args.batch_size, sampling.image_batch_fn(model, args, guidance), grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    defaults.update(sampling.preset_flag_defaults())
    defaults.update(sampling.classifier_flag_defaults())
    defaults.update(sigma_space.architecture_defaults())
    defaults.update(classifier_defaults())
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
