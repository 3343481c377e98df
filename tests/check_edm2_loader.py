"""One-off check, run by hand with a checkout of NVlabs/edm2: EDM2's own training/dataset.py ImageFolderDataset
reads a latent dataset written by datasets/encode_latents.py (a folder or a zip).

    python tests/check_edm2_loader.py EDM2_CHECKOUT DATASET [DATASET ...]

Runs EDM2's loader in a child process with only the checkout on sys.path and prints, per dataset, the item count,
image shape, label shape, and the sum and label of item 3 (compare with numpy: np.load of the 4th .npy file).
"""

import subprocess
import sys

CHILD = ("import sys, json\nsys.path.insert(0, sys.argv[1])\n"
         "from training.dataset import ImageFolderDataset\nout = []\nfor path in sys.argv[2:]:\n"
         "    d = ImageFolderDataset(path, use_labels=True)\n    x, y = d[3]\n"
         "    out.append([path, len(d), list(d.image_shape), list(d.label_shape), float(x.sum()), y.tolist()])\n"
         "print(json.dumps(out, indent=1))")

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(subprocess.run([sys.executable, "-c", CHILD, *sys.argv[1:]]).returncode)
