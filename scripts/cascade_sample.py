"""Base model (optionally classifier-guided) then upsampler, in one command: writes both npz files and grids.

    python scripts/cascade_sample.py \\
        --base_model_path 64x64_diffusion.pt --base_flags "$BASE_FLAGS --timestep_respacing 250" \\
        --classifier_path 64x64_classifier.pt --classifier_flags "$CLASSIFIER_FLAGS" --classifier_scale 1.0 \\
        --sr_model_path 64_256_upsampler.pt --sr_flags "$SR_FLAGS --timestep_respacing 250" --num_samples 16

Each network's architecture comes from its flag string, else from the args.json beside its checkpoint.
Outputs go to LOG_DIR/base/ and LOG_DIR/upsampled/.
"""

import os

from guided_diffusion import cli, dist_util, logger, sampling
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)

# Options that apply to both stages.
SHARED = [k for k in sampling.sampling_defaults() if k not in ("model_path", "log_dir", "grid")]


def stage_args(args, defaults, flags, path, flag):
    sampling.require_file(path, flag)
    stage = sampling.namespace_from_flags(defaults, flags, path, flag)
    for key in SHARED:
        setattr(stage, key, getattr(args, key))
    return stage


def main():
    args = create_argparser().parse_args()
    base = stage_args(args, model_and_diffusion_defaults(), args.base_flags, args.base_model_path,
                      "base_model_path")
    sr = stage_args(args, sr_model_and_diffusion_defaults(), args.sr_flags, args.sr_model_path, "sr_model_path")
    sr.cfg_scale = 1.0  # classifier-free guidance steers the base stage
    if sr.small_size != base.image_size:
        raise ValueError(f"the base model makes {base.image_size}x{base.image_size} images but the upsampler takes "
                         f"--small_size {sr.small_size}")
    dist_util.setup_dist()
    folder = sampling.configure_logging("cascade_sample", args)

    model, diffusion = create_model_and_diffusion(**args_to_dict(base, model_and_diffusion_defaults().keys()))
    sampling.load_network(model, args.base_model_path, "base_model_path", base.use_fp16)
    cond_fn = None
    if args.classifier_path:
        clf = stage_args(args, classifier_defaults(), f"--image_size {base.image_size} "
                         f"--num_classes {base.num_classes} {args.classifier_flags}", args.classifier_path,
                         "classifier_path")
        classifier = create_classifier(**args_to_dict(clf, classifier_defaults().keys()))
        sampling.load_network(classifier, args.classifier_path, "classifier_path", clf.classifier_use_fp16)
        cond_fn = sampling.classifier_cond_fn(classifier, args.classifier_scale, args.use_bf16)
    logger.log("stage 1: base samples")
    base_writer = sampling.SampleWriter(os.path.join(folder, "base"), args.num_samples, base.image_size,
                                        base.image_size, with_labels=base.class_cond or cond_fn is not None)
    base_path = sampling.generate(base_writer, args.batch_size,
                                  sampling.image_batch_fn(model, diffusion, base, cond_fn), grid=args.grid)
    del model, diffusion, cond_fn

    logger.log("stage 2: upsampling")
    sr_model, sr_diffusion = sr_create_model_and_diffusion(**args_to_dict(sr, sr_model_and_diffusion_defaults().keys()))
    sampling.load_network(sr_model, args.sr_model_path, "sr_model_path", sr.use_fp16)
    low_res = sampling.BaseSamples(base_path, sr.small_size, need_labels=sr.class_cond)
    sr_writer = sampling.SampleWriter(os.path.join(folder, "upsampled"), args.num_samples, sr.large_size,
                                      sr.large_size, with_labels=sr.class_cond)
    sampling.generate(sr_writer, args.batch_size, sampling.super_res_batch_fn(sr_model, sr_diffusion, sr, low_res),
                      grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    del defaults["model_path"]
    defaults.update(base_model_path="", base_flags="", sr_model_path="", sr_flags="", classifier_path="",
                    classifier_flags="", classifier_scale=1.0, num_samples=16, batch_size=4)
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
