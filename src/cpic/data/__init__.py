"""Data layer: real volumes from installed packages and procedural phantoms of any size.

Imports the sources and util layers only.
"""

from cpic.data.cohort_files import write_cohort
from cpic.data.lesions import ANATOMIES, Lesion, lesion_cohort, lesion_source
from cpic.data.phantoms import band_limited_noise, blobs, shepp_logan
from cpic.data.procedural import blob_field
from cpic.data.real import DataUnavailable, colin27, head_ct, mean_head, mni152
from cpic.data.shapes import SHAPE_CLASSES, shape_cohort, shape_source

__all__ = [
    "ANATOMIES",
    "Lesion",
    "lesion_cohort",
    "lesion_source",
    "SHAPE_CLASSES",
    "DataUnavailable",
    "band_limited_noise",
    "blob_field",
    "blobs",
    "colin27",
    "head_ct",
    "mean_head",
    "mni152",
    "shape_cohort",
    "shape_source",
    "shepp_logan",
    "write_cohort",
]
