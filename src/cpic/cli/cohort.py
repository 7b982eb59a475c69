"""``cpic cohort``: write a built-in cohort (lesions in a real head, or shapes) as volume files
plus a CSV manifest, ready for ``cpic train``."""

from __future__ import annotations

import argparse
import math
import time

from cpic.cli.common import add_common, emit, one_line_errors, positive_int, subparser
from cpic.data import ANATOMIES, SHAPE_CLASSES, lesion_cohort, shape_cohort, write_cohort
from cpic.data.cohort_files import FORMATS, check_cohort_folder
from cpic.util import require
from cpic.util.progress import progress, shows_progress
from cpic.util.units import human_bytes


def register(commands) -> None:
    p = subparser(
        commands,
        "cohort",
        help="write a built-in cohort (lesions in a real head, or shapes) with a manifest",
        description=(
            "Write a cohort as volume files plus FOLDER/manifest.csv. 'lesion': a real head "
            "(Colin27 by default) with a random smooth deformation, bias field and noise; every "
            "other volume gets 1..--max-lesions ellipsoidal lesions; columns presence, count, "
            "volume (voxels) and region (AAL label of the largest lesion). 'shapes': 10 classes "
            "of voxelised shapes in random poses; column label. The same --seed gives the same "
            "volumes at any --side."
        ),
        example="cpic cohort lesion lesions/ --count 200 --side 128 --format nii.gz",
    )
    p.add_argument("kind", choices=("lesion", "shapes"), help="which cohort")
    p.add_argument("folder", metavar="FOLDER", help="where the files and manifest.csv go")
    p.add_argument("--count", type=positive_int, default=100, help="volumes (default 100)")
    p.add_argument("--side", type=positive_int, default=128, help="grid side: side^3 volumes (default 128)")
    p.add_argument("--format", choices=FORMATS, default="npy", help="volume file format (default npy)")
    p.add_argument(
        "--anatomy", choices=ANATOMIES, default="colin27", help="lesion: the head (default colin27)"
    )
    p.add_argument(
        "--max-lesions", type=positive_int, default=3, help="lesion: most lesions per volume (default 3)"
    )
    p.add_argument(
        "--oedema", action="store_true", help="lesion: put each lesion in a faint hypointense oedema halo"
    )
    add_common(p, device=False)
    one_line_errors(p, "cohort")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.side < 8:
        raise ValueError(f"--side must be at least 8, got {args.side}.")
    if args.format == "nii.gz":
        require("nibabel", "io", "NIfTI volumes")
    check_cohort_folder(args.folder, overwrite=args.overwrite)
    started = time.perf_counter()
    if args.kind == "lesion":
        sources, labels = lesion_cohort(
            args.count,
            side=args.side,
            seed=args.seed,
            anatomy=args.anatomy,
            max_lesions=args.max_lesions,
            oedema=args.oedema,
        )
        columns = {name: labels[name] for name in ("presence", "count", "volume", "region")}
    else:
        sources, labels = shape_cohort(args.count, side=args.side, seed=args.seed)
        columns = {"label": [SHAPE_CLASSES[i] for i in labels.tolist()]}
    bars = shows_progress(args)
    manifest = write_cohort(
        sources,
        columns,
        args.folder,
        args.format,
        progress=lambda items: progress(items, bars, f"writing {args.kind}"),
        overwrite=args.overwrite,
    )
    summary = {
        "kind": args.kind,
        "manifest": str(manifest),
        "volumes": len(sources),
        "shape": [args.side] * 3,
        "format": args.format,
        "seconds": time.perf_counter() - started,
    }
    lines = [
        f"cpic cohort: wrote {len(sources)} {args.kind} volumes of {args.side}^3 "
        f"({human_bytes(len(sources) * math.prod(summary['shape']) * 4)} as float32) and {manifest}"
    ]
    emit(args, summary, lines)
    return 0
