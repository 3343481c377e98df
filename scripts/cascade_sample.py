"""Base model (optionally guided) then upsampler, in one command: writes both npz files and grids.

    python scripts/cascade_sample.py \\
        --base_model_path 64x64_diffusion.pt --base_flags "$BASE_FLAGS --timestep_respacing 250" \\
        --classifier_path 64x64_classifier.pt --classifier_flags "$CLASSIFIER_FLAGS" --classifier_scale 1.0 \\
        --sr_model_path 64_256_upsampler.pt --sr_flags "$SR_FLAGS --timestep_respacing 250" --num_samples 16

Each network's architecture comes from its flag string, else from the args.json beside its checkpoint.
Guidance (classifier, --cfg_scale, --guide_model_path with --guide_flags) steers the base stage.
Outputs go to LOG_DIR/base/ and LOG_DIR/upsampled/.
"""

import os

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.loading.checkpoint_flags import checkpoint_args, configure_logging, namespace_from_flags, require_file
from guided_diffusion.guidance.compose import Guidance
from guided_diffusion.sampling.record import sample_record
from guided_diffusion.sampling.writer import SampleWriter, generate
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    sr_create_model_and_diffusion,
)
from guided_diffusion.cli.settings import freeze, with_flags

# Options that apply to both stages.
SHARED = [k for k in sampling.sampling_defaults() if k not in ("model_path", "log_dir", "grid")]


def stage_args(args, defaults, flags, path, flag):
    require_file(path, flag)
    if sampling.is_nvlabs_pickle(path):
        raise ValueError(f"--{flag} {path} is an EDM/EDM2 network: sample it with image_sample.py or "
                         "classifier_sample.py (cascade_sample.py takes ADM checkpoints)")
    return freeze({**vars(namespace_from_flags(defaults, flags, path, flag)), **{k: getattr(args, k) for k in SHARED}})


def main(argv: list[str] | None = None) -> None:
    args = create_argparser().parse_args(argv)
    base_architecture = sigma_space.architecture_defaults()
    sr_architecture = sigma_space.upsampler_architecture_defaults()
    base = stage_args(args, base_architecture, args.base_flags, args.base_model_path, "base_model_path")
    sr = stage_args(args, sr_architecture, args.sr_flags, args.sr_model_path, "sr_model_path")
    if sr.small_size != base.image_size:
        raise ValueError(f"the base model makes {base.image_size}x{base.image_size} images but the upsampler takes "
                         f"--small_size {sr.small_size}")
    clf = None
    if args.classifier_path:  # defaults from the base model, then the classifier's args.json, then its flags
        clf_defaults = {**classifier_defaults(), "image_size": base.image_size, "num_classes": base.num_classes}
        clf = stage_args(args, clf_defaults, args.classifier_flags, args.classifier_path, "classifier_path")
        base = with_flags(base, **sampling.match_classifier(base, vars(clf), args.classifier_path))
    base = with_flags(base, classifier_path=args.classifier_path, classifier_scale=args.classifier_scale,
                      classifier_interval=args.classifier_interval)
    guide = sampling.guide_args(base, base_architecture)
    prepared = sampling.Prepared(base, guide, sampling.guidance_terms(base))
    sampling.sampler_options(args)
    dist_util.setup_dist()
    folder = configure_logging("cascade_sample", args)

    model = sampling.load_model(create_model_and_diffusion, base, base_architecture, args.base_model_path,
                                "base_model_path", base.use_fp16)
    classifier = None
    if clf is not None:
        classifier = create_classifier(**args_to_dict(clf, classifier_defaults().keys()))
        sampling.load_module_weights(classifier, args.classifier_path, "classifier_path", clf.classifier_use_fp16)
    conditioning = sigma_space.classifier_conditioning(checkpoint_args(args.classifier_path)) if clf else None
    guidance = sampling.guidance_from_args(base, prepared, create_model_and_diffusion, base_architecture, classifier,
                                           conditioning)
    logger.log("stage 1: base samples")
    clf_settings = {f"classifier:{k}": v for k, v in vars(clf).items() if k not in SHARED} if clf else {}
    base_writer = SampleWriter(os.path.join(folder, "base"), args.num_samples, base.image_size, base.image_size,
                               with_labels=base.class_cond or classifier is not None,
                               record=lambda: sample_record("cascade_sample/base", {**vars(base), **clf_settings},
                                                            files={"base_model_path": args.base_model_path,
                                                                   "classifier_path": args.classifier_path}))
    base_path = generate(base_writer, args.batch_size, sampling.image_batch_fn(model, base, guidance),
                         grid=args.grid)
    del model, guidance, classifier

    logger.log("stage 2: upsampling")
    sr_model = sampling.load_model(sr_create_model_and_diffusion, sr, sr_architecture, args.sr_model_path,
                                   "sr_model_path", sr.use_fp16)
    low_res = sampling.BaseSamples(base_path, sr.small_size, need_labels=sr.class_cond)
    sr_writer = SampleWriter(os.path.join(folder, "upsampled"), args.num_samples, sr.large_size, sr.large_size,
                             with_labels=sr.class_cond, record=lambda: sample_record(
                                 "cascade_sample/upsampled", vars(sr),
                                 files={"sr_model_path": args.sr_model_path, "base_samples": base_path}))
    sr = with_flags(sr, save_trajectory=0)  # the trajectory strip shows the base stage
    generate(sr_writer, args.batch_size, sampling.super_res_batch_fn(sr_model, sr, low_res, Guidance()),
             grid=args.grid)


def create_argparser():
    defaults = sampling.sampling_defaults()
    del defaults["model_path"]
    defaults.update(sampling.classifier_flag_defaults())
    defaults.update(base_model_path="", base_flags="", sr_model_path="", sr_flags="", classifier_flags="",
                    num_samples=16, batch_size=4)
    return cli.make_parser(__doc__, defaults)


if __name__ == "__main__":
    cli.run(main)
