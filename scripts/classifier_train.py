"""Train a noisy-image classifier for classifier guidance on a folder of class-prefixed images.

    mpiexec -n N python scripts/classifier_train.py --data_dir DIR [--val_data_dir DIR] $CLASSIFIER_FLAGS $TRAIN_FLAGS

--objective edm trains it for models trained with --objective edm or --arch edm2: noise levels from the same
log-normal distribution (--p_mean, --p_std), inputs c_in(sigma) x and noise labels ln(sigma) / 4 as those networks
see them, so classifier_sample.py can guide them with any sigma-space sampler.
"""

import functools

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.training.classifier import ClassifierTrainLoop
from guided_diffusion.image_datasets import class_flag_layer, load_data
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
)
from guided_diffusion.train_util import find_resume_checkpoint, parse_resume_step_from_filename


def main(argv: list[str] | None = None) -> None:
    parsed = create_argparser().parse_args(argv)
    cli.require_data_dir(parsed.data_dir)
    # The objective; --num_classes and class_names from the data. Frozen: the run reads these settings.
    args = cli.training_settings(parsed, argv, functools.partial(sigma_space.edm_flag_layer, allowed=("adm", "edm")),
                                 functools.partial(class_flag_layer, class_cond=True))
    log_dir = cli.start(args, "classifier_train")

    logger.log("creating model and diffusion...")
    model, diffusion = create_classifier_and_diffusion(
        **args_to_dict(args, classifier_and_diffusion_defaults().keys()))
    model.to(dist_util.dev())
    resume = find_resume_checkpoint(args.resume_checkpoint, log_dir)

    logger.log("creating data loader...")
    common = dict(batch_size=args.batch_size, image_size=args.image_size, class_cond=True,
                  skip_bad_images=args.skip_bad_images, num_classes=args.num_classes, seed=args.seed,
                  num_workers=args.num_workers, class_names=args.class_names)
    data = load_data(data_dir=args.data_dir, random_crop=args.random_crop, random_flip=args.random_flip,
                     start_batch=parse_resume_step_from_filename(resume) if resume else 0, **common)
    val_data = load_data(data_dir=args.val_data_dir, **common) if args.val_data_dir else None

    logger.log("training classifier model...")
    ClassifierTrainLoop(
        model=model, diffusion=diffusion, data=data, val_data=val_data, batch_size=args.batch_size,
        microbatch=args.microbatch, lr=args.lr, log_interval=args.log_interval, save_interval=args.save_interval,
        eval_interval=args.eval_interval, resume_checkpoint=resume, noised=args.noised,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay, anneal_lr=args.anneal_lr, iterations=args.iterations,
        use_fp16=args.classifier_use_fp16, use_bf16=args.use_bf16,
        objective=sigma_space.objective_from_flags(args) if args.objective == "edm" else None,
    ).run_loop()


# The training flags the original classifier_train.py shares with image_train.py (same defaults).
SHARED_TRAINING_FLAGS = ("data_dir", "weight_decay", "microbatch", "schedule_sampler", "resume_checkpoint",
                         "log_interval", "save_interval", "use_bf16", "log_dir", "seed", "random_flip",
                         "skip_bad_images", "num_workers")


def create_argparser():
    shared = cli.training_defaults()
    defaults = {k: shared[k] for k in SHARED_TRAINING_FLAGS}
    # Its own flags and defaults (the original always cropped randomly).
    defaults.update(val_data_dir="", noised=True, iterations=150000, lr=3e-4, anneal_lr=False, batch_size=4,
                    eval_interval=5, random_crop=True)
    return cli.make_parser(__doc__, defaults, classifier_and_diffusion_defaults(), sigma_space.objective_defaults())


if __name__ == "__main__":
    cli.run(main)
