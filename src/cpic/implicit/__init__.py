"""Implicit representation of one volume: fit a reconstruction model to it from the voxels its
cross pivots read (:func:`compress`), store it (:func:`save_compressed`) and decode any voxel
from the stored files alone (:func:`load_compressed`, :func:`reconstruct`).

Imports train, nn, tt, layout, sources and util; knows nothing of the command line.
"""

from cpic.implicit.decoding import CHUNK, block_writer, decode, reconstruct
from cpic.implicit.files import (
    CompressedVolume,
    compressed_files,
    latent_path,
    load_compressed,
    save_compressed,
)
from cpic.implicit.fit import FIT_FAILURES, CompressResult, RefusedToStart, compress, held_out_error
from cpic.implicit.model import reconstruction_model

__all__ = [
    "CHUNK",
    "block_writer",
    "compressed_files",
    "FIT_FAILURES",
    "CompressResult",
    "CompressedVolume",
    "RefusedToStart",
    "compress",
    "decode",
    "held_out_error",
    "latent_path",
    "load_compressed",
    "reconstruct",
    "reconstruction_model",
    "save_compressed",
]
