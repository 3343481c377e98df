"""EDM2's generator presets: which posted network (and guide) each of its 36 presets samples, and the sampling
flags a preset implies."""

from __future__ import annotations

import os


# EDM2's generator presets (its generate_images.py): name -> (network, guide network or None, guide scale). The
# files are posted at EDM2_URL. The img512 networks work on 4-channel latents of Stability's VAE (their pickles'
# encoder record names it); sampling decodes them to pixels (guided_diffusion/sampling/latents.py).
EDM2_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"
EDM2_PRESETS: dict[str, tuple[str, str | None, float]] = {
    "edm2-img512-xs-fid": ("edm2-img512-xs-2147483-0.135.pkl", None, 1.0),
    "edm2-img512-xs-dino": ("edm2-img512-xs-2147483-0.200.pkl", None, 1.0),
    "edm2-img512-s-fid": ("edm2-img512-s-2147483-0.130.pkl", None, 1.0),
    "edm2-img512-s-dino": ("edm2-img512-s-2147483-0.190.pkl", None, 1.0),
    "edm2-img512-m-fid": ("edm2-img512-m-2147483-0.100.pkl", None, 1.0),
    "edm2-img512-m-dino": ("edm2-img512-m-2147483-0.155.pkl", None, 1.0),
    "edm2-img512-l-fid": ("edm2-img512-l-1879048-0.085.pkl", None, 1.0),
    "edm2-img512-l-dino": ("edm2-img512-l-1879048-0.155.pkl", None, 1.0),
    "edm2-img512-xl-fid": ("edm2-img512-xl-1342177-0.085.pkl", None, 1.0),
    "edm2-img512-xl-dino": ("edm2-img512-xl-1342177-0.155.pkl", None, 1.0),
    "edm2-img512-xxl-fid": ("edm2-img512-xxl-0939524-0.070.pkl", None, 1.0),
    "edm2-img512-xxl-dino": ("edm2-img512-xxl-0939524-0.150.pkl", None, 1.0),
    "edm2-img64-s-fid": ("edm2-img64-s-1073741-0.075.pkl", None, 1.0),
    "edm2-img64-m-fid": ("edm2-img64-m-2147483-0.060.pkl", None, 1.0),
    "edm2-img64-l-fid": ("edm2-img64-l-1073741-0.040.pkl", None, 1.0),
    "edm2-img64-xl-fid": ("edm2-img64-xl-0671088-0.040.pkl", None, 1.0),
    "edm2-img512-xs-guid-fid": ("edm2-img512-xs-2147483-0.045.pkl", "edm2-img512-xs-uncond-2147483-0.045.pkl", 1.4),
    "edm2-img512-xs-guid-dino": ("edm2-img512-xs-2147483-0.150.pkl", "edm2-img512-xs-uncond-2147483-0.150.pkl", 1.7),
    "edm2-img512-s-guid-fid": ("edm2-img512-s-2147483-0.025.pkl", "edm2-img512-xs-uncond-2147483-0.025.pkl", 1.4),
    "edm2-img512-s-guid-dino": ("edm2-img512-s-2147483-0.085.pkl", "edm2-img512-xs-uncond-2147483-0.085.pkl", 1.9),
    "edm2-img512-m-guid-fid": ("edm2-img512-m-2147483-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl", 1.2),
    "edm2-img512-m-guid-dino": ("edm2-img512-m-2147483-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 2.0),
    "edm2-img512-l-guid-fid": ("edm2-img512-l-1879048-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.2),
    "edm2-img512-l-guid-dino": ("edm2-img512-l-1879048-0.035.pkl", "edm2-img512-xs-uncond-2147483-0.035.pkl", 1.7),
    "edm2-img512-xl-guid-fid": ("edm2-img512-xl-1342177-0.020.pkl", "edm2-img512-xs-uncond-2147483-0.020.pkl", 1.2),
    "edm2-img512-xl-guid-dino": ("edm2-img512-xl-1342177-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl", 1.7),
    "edm2-img512-xxl-guid-fid": ("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.2),
    "edm2-img512-xxl-guid-dino": ("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.7),
    "edm2-img512-s-autog-fid": ("edm2-img512-s-2147483-0.070.pkl", "edm2-img512-xs-0134217-0.125.pkl", 2.1),
    "edm2-img512-s-autog-dino": ("edm2-img512-s-2147483-0.120.pkl", "edm2-img512-xs-0134217-0.165.pkl", 2.45),
    "edm2-img512-xxl-autog-fid": ("edm2-img512-xxl-0939524-0.075.pkl", "edm2-img512-m-0268435-0.155.pkl", 2.05),
    "edm2-img512-xxl-autog-dino": ("edm2-img512-xxl-0939524-0.130.pkl", "edm2-img512-m-0268435-0.205.pkl", 2.3),
    "edm2-img512-s-uncond-autog-fid": ("edm2-img512-s-uncond-2147483-0.070.pkl",
                                       "edm2-img512-xs-uncond-0134217-0.110.pkl", 2.85),
    "edm2-img512-s-uncond-autog-dino": ("edm2-img512-s-uncond-2147483-0.090.pkl",
                                        "edm2-img512-xs-uncond-0134217-0.125.pkl", 2.9),
    "edm2-img64-s-autog-fid": ("edm2-img64-s-1073741-0.045.pkl", "edm2-img64-xs-0134217-0.110.pkl", 1.7),
    "edm2-img64-s-autog-dino": ("edm2-img64-s-1073741-0.105.pkl", "edm2-img64-xs-0134217-0.175.pkl", 2.2),
}


def resolve_preset(name: str, model_dir: str) -> dict:
    """The sampling flags of an EDM2 preset whose files lie in model_dir: model_path, guide_model_path and
    guide_scale, with EDM2's sampler (Heun, 32 steps, D not clipped). A missing file is a one-line error that
    says where to download it."""
    if name not in EDM2_PRESETS:
        raise ValueError(f"--preset {name!r}: choose one of {', '.join(EDM2_PRESETS)}")
    net, guide, scale = EDM2_PRESETS[name]
    for file in filter(None, (net, guide)):
        if not os.path.exists(os.path.join(model_dir, file)):
            raise FileNotFoundError(f"--preset {name}: {os.path.join(model_dir, file)} not found: download "
                                    f"{EDM2_URL}/{file} into --model_dir {model_dir}")
    return dict(model_path=os.path.join(model_dir, net), guide_model_path=os.path.join(model_dir, guide) if guide
                else "", guide_scale=scale, sampler="heun", steps=32, clip_denoised=False)
