"""One volume from a read budget: adaptive lattice refinement (:func:`refine`), a regular
lattice decoded by cubic splines, the one of the two a pilot of the reads calls for
(:func:`choose_reads`, the default), or a neural implicit model fitted on its cross pivots
(:func:`compress`), measured on voxels never read beside the lattice baseline; stored as one
file (:func:`save_compressed`) and decoded from it alone (:func:`load_compressed`,
:func:`reconstruct`, :func:`write_reconstruction`).

Imports train, nn, tt, sources and util; knows nothing of the command line.
"""

from cpic.implicit.choose import EDGE_KURTOSIS, Choice, choose_reads, difference_kurtosis
from cpic.implicit.compression import (
    COMPRESS_METHODS,
    DEFAULT_BUDGET,
    DEFAULT_METHOD,
    CompressResult,
    compress,
    read_budget,
)
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
    "COMPRESS_METHODS",
    "DEFAULT_BUDGET",
    "DEFAULT_METHOD",
    "EDGE_KURTOSIS",
    "FIT_FAILURES",
    "HELD_OUT",
    "METHODS",
    "Choice",
    "CompressResult",
    "CompressedVolume",
    "LatticeReads",
    "RefusedToStart",
    "check_output",
    "choose_reads",
    "compress",
    "decode_box",
    "decode_lattice",
    "difference_kurtosis",
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
