"""Shared test helpers."""

from pathlib import Path

import numpy as np
import torch

from cpic import TT

#: an oblique voxel-to-world affine (rotation, shear, anisotropic voxels, an origin off zero)
OBLIQUE = np.array(
    [[0.9, 0.2, 0.1, -80.0], [-0.15, 1.1, 0.3, -110.0], [0.05, -0.25, 1.3, -60.0], [0.0, 0.0, 0.0, 1.0]]
)


def oblique_nifti(path: Path, array: np.ndarray) -> Path:
    """``array`` as NIfTI with the sform ``OBLIQUE`` (MNI, code 4), a scanner qform of 2 mm
    voxels (code 1), units mm and ms (needs nibabel)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, None)
    image.header.set_sform(OBLIQUE, code=4)
    image.header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, path)
    return path


def random_tt(batch, shape, rank, dtype=torch.float64, seed=0) -> TT:
    """A batch of TTs with Gaussian cores of one rank."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return TT(
        [
            torch.randn(batch, ranks[k], n, ranks[k + 1], generator=gen, dtype=dtype)
            for k, n in enumerate(shape)
        ]
    )


def reseal(json_path, record: dict) -> None:
    """Write checkpoint metadata ``record`` to ``json_path`` and seal it into its tensors file
    (new header copy and sha256): a crafted file that passes the integrity checks, to reach the
    checks behind them."""
    import json
    from pathlib import Path

    import safetensors.torch

    from cpic.train.checkpoint import SEAL, _sha256, canonical_json

    st_path = Path(json_path).with_suffix(".safetensors")
    tensors = safetensors.torch.load_file(st_path)
    st_path.write_bytes(
        safetensors.torch.save(tensors, metadata={"format": "pt", SEAL: canonical_json(record["meta"])})
    )
    Path(json_path).write_text(json.dumps({**record, "sha256": _sha256(st_path)}))
