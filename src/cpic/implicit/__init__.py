"""One volume from a read budget: adaptive lattice refinement (:func:`refine`), a regular
lattice decoded by cubic splines, or a neural implicit model fitted on its cross pivots
(:func:`compress`), measured on voxels never read beside the lattice baseline; stored as one
file (:func:`save_compressed`) and decoded from it alone (:func:`load_compressed`,
:func:`reconstruct`, :func:`write_reconstruction`).

Imports train, nn, tt, sources and util; knows nothing of the command line.
"""

from cpic.implicit.compression import DEFAULT_BUDGET, DEFAULT_METHOD, CompressResult, compress, read_budget
from cpic.implicit.decoding import (
    CHUNK,
    check_output,
    decode_box,
    normalised,
    reconstruct,
    slabs,
    values_at,
    write_reconstruction,
)
from cpic.implicit.files import METHODS, CompressedVolume, load_compressed, save_compressed
from cpic.implicit.fit import FIT_FAILURES, RefusedToStart, fit_implicit
from cpic.implicit.lattice import interpolation_matrix, lattice_nodes, lattice_stride, upsample
from cpic.implicit.metrics import HELD_OUT, error_figures, held_out_coords, otsu_threshold
from cpic.implicit.model import reconstruction_model
from cpic.implicit.refine import LatticeReads, decode_lattice, read_lattice, refine

__all__ = [
    "CHUNK",
    "DEFAULT_BUDGET",
    "DEFAULT_METHOD",
    "FIT_FAILURES",
    "HELD_OUT",
    "METHODS",
    "CompressResult",
    "CompressedVolume",
    "LatticeReads",
    "RefusedToStart",
    "check_output",
    "compress",
    "decode_box",
    "decode_lattice",
    "error_figures",
    "fit_implicit",
    "held_out_coords",
    "interpolation_matrix",
    "lattice_nodes",
    "lattice_stride",
    "load_compressed",
    "normalised",
    "otsu_threshold",
    "read_budget",
    "read_lattice",
    "reconstruct",
    "reconstruction_model",
    "refine",
    "save_compressed",
    "slabs",
    "upsample",
    "values_at",
    "write_reconstruction",
]
