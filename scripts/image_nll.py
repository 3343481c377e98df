"""Approximate the bits-per-dimension of a model on a folder of images (the variational bound, all T steps).

    mpiexec -n N python scripts/image_nll.py --data_dir DIR --model_path MODEL.pt $MODEL_FLAGS

Logs the running bits/dim and the bound's terms per timestep quartile; saves the mean per-step terms
(vb, mse, xstart_mse) as {name}_terms.npz and the per-image bits/dim as bpd.npz in the log folder.
"""

import os

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import run as cli
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.loading.checkpoint_flags import (
    checkpoint_layer,
    configure_logging,
    explicit_flags,
    require_file,
)
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_util import (
    args_to_dict,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.cli.settings import freeze, resolve


def main(argv: list[str] | None = None) -> None:
    parsed = create_argparser().parse_args(argv)
    require_file(parsed.model_path, "model_path")
    if not parsed.data_dir:
        raise ValueError("--data_dir is required: a folder of images to evaluate on")
    # The network's flags from the args.json beside the checkpoint; those on the command line win. Frozen.
    given, explicit = dict(vars(parsed)), explicit_flags(argv)
    layer, saved = checkpoint_layer(parsed.model_path, model_and_diffusion_defaults(), given, explicit, "model_path")
    args, saved = freeze(resolve(given, explicit, layer)), saved or {}
    dist_util.setup_dist()
    configure_logging("image_nll", args)

    logger.log("creating model and diffusion...")
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    sampling.load_module_weights(model, args.model_path, "model_path", args.use_fp16)
    torch.manual_seed(args.seed + dist_util.get_rank())

    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, deterministic=True, random_flip=False,
                     num_classes=args.num_classes, class_names=saved.get("class_names"))  # training's labels
    logger.log("evaluating...")
    run_bpd_evaluation(model, diffusion, data, args)


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    values = values.clone()
    if dist_util.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist_util.get_world_size()
    return values


def run_bpd_evaluation(model, diffusion, data, args):
    world = dist_util.get_world_size()
    terms = {"vb": [], "mse": [], "xstart_mse": []}
    bpd = []
    done = 0
    model_fn = sampling.model_fn_for(model, args.class_cond, args.use_bf16)
    with tqdm(total=args.num_samples, desc="images", disable=dist_util.get_rank() != 0) as bar:
        while done < args.num_samples:
            batch, cond = next(data)
            batch = batch.to(dist_util.dev())
            kwargs = {k: v.to(dist_util.dev()) for k, v in cond.items()}
            metrics = diffusion.calc_bpd_loop(model_fn, batch, clip_denoised=args.clip_denoised,
                                              model_kwargs=kwargs, progress=args.progress)
            for key, series in terms.items():
                # Columns run from step T-1 down to 0: flip to step order.
                series.append(_mean_over_ranks(metrics[key].mean(dim=0).flip(0)).cpu().numpy())
            gathered = [torch.zeros_like(metrics["total_bpd"]) for _ in range(world)]
            if world > 1:
                dist.all_gather(gathered, metrics["total_bpd"])
            else:
                gathered = [metrics["total_bpd"]]
            bpd.extend(torch.cat(gathered).cpu().tolist())
            done += world * batch.shape[0]
            bar.update(world * batch.shape[0])
            log_quartiles(terms["vb"][-1])
            logger.logkv("bpd", float(np.mean(bpd)))
            logger.logkv("prior_bpd", float(_mean_over_ranks(metrics["prior_bpd"].mean())))
            logger.logkv("samples", done)
            logger.dumpkvs()
    if dist_util.get_rank() == 0:
        folder = logger.get_dir()
        for name, series in terms.items():
            np.savez(os.path.join(folder, f"{name}_terms.npz"), np.mean(np.stack(series), axis=0))
        np.savez(os.path.join(folder, "bpd.npz"), np.array(bpd[:args.num_samples]))
        logger.log(f"done {done} images: bpd={np.mean(bpd):.4f} (terms saved in {folder})")
    dist_util.barrier()


def log_quartiles(vb_by_step: np.ndarray) -> None:
    """The bound's per-step terms summed within each quarter of the steps (they add up to bpd - prior)."""
    for q, part in enumerate(np.array_split(vb_by_step, 4)):
        logger.logkv(f"vb_q{q}", float(part.sum()))


def create_argparser():
    defaults = dict(data_dir="", clip_denoised=True, num_samples=1000, batch_size=1, model_path="",
                    seed=0, use_bf16=False, log_dir="", progress=False)
    return cli.make_parser(__doc__, defaults, model_and_diffusion_defaults())


if __name__ == "__main__":
    cli.run(main)
