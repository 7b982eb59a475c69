"""A corpus of bad input files, generated on the fly: volumes, manifests and model files.

Every builder writes into a folder and returns ``{case name: path}``; nothing is committed.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np

GRID = (8, 8, 8)


def _rewrite_npy_shape(path: Path, shape) -> None:
    """Replace the shape in a .npy header (same header length): a header that lies."""
    data = path.read_bytes()
    size = struct.unpack("<H", data[8:10])[0]
    header = data[10 : 10 + size].decode("latin1")
    new = re.sub(r"'shape': \([^)]*\)", f"'shape': {tuple(shape)!r}", header).rstrip()
    new = new + " " * (size - len(new) - 1) + "\n"
    path.write_bytes(data[:10] + new.encode("latin1") + data[10 + size :])


def sealed(meta: dict) -> dict[str, str]:
    """The safetensors header of a checkpoint whose metadata is ``meta`` (see cpic.train.checkpoint)."""
    from cpic.train.checkpoint import SEAL, canonical_json

    return {"format": "pt", SEAL: canonical_json(meta)}


def _patched(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def broken_volumes(root: Path) -> dict[str, Path | str]:
    """Volume files no reader may accept: each must be refused with one message naming it."""
    import h5py
    import nibabel as nib
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    good = np.random.default_rng(0).normal(size=GRID).astype(np.float32)
    np.save(root / "good.npy", good)
    npy = (root / "good.npy").read_bytes()
    c: dict[str, Path | str] = {}

    def put(name: str, file: str, data: bytes) -> None:
        (root / file).write_bytes(data)
        c[name] = root / file

    put("npy truncated", "trunc.npy", npy[:-100])
    put("npy wrong magic", "magic.npy", b"\x00BADMAGI" + npy[8:])
    put("npy 0 bytes", "empty.npy", b"")
    put("npy header only", "header.npy", npy[:128])
    put("npy garbage header", "garbage_header.npy", npy[:10] + b"{'descr': <f4, what" + npy[29:])
    for name, shape in [
        ("npy header shape too big", (16, 16, 16)),
        ("npy header shape too small", (4, 4, 4)),
        ("npy absurd declared dims", (10**9, 10**9, 10**9)),
        ("npy negative dims", (-8, 8, -8)),
        ("npy zero-size dims", (0, 8, 8)),
    ]:
        file = root / f"{name.replace(' ', '_')}.npy"
        file.write_bytes(npy)
        _rewrite_npy_shape(file, shape)
        c[name] = file
    np.save(root / "pickle.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    c["npy pickle payload"] = root / "pickle.npy"
    np.save(root / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    c["npy strings"] = root / "strings.npy"
    np.save(root / "complex.npy", good.astype(np.complex64))
    c["npy complex"] = root / "complex.npy"
    big = good.astype(np.float64)
    big[::2, ::2, ::2] = 1e300  # every 3^3 patch and one voxel in 8: whatever the pivots, they are read
    np.save(root / "beyond_float32.npy", big)
    c["npy beyond float32"] = root / "beyond_float32.npy"
    (root / "dir.npy").mkdir(exist_ok=True)
    c["a directory"] = root / "dir.npy"
    if not (root / "fifo.npy").exists():
        os.mkfifo(root / "fifo.npy")
    c["a FIFO (would block)"] = root / "fifo.npy"
    c["missing file"] = root / "missing.npy"
    put("unknown suffix", "notes.xyz", b"hello")

    nib.save(nib.Nifti1Image(good, np.eye(4)), root / "good.nii")
    nii = (root / "good.nii").read_bytes()
    put("nii truncated", "trunc.nii", nii[:-300])
    put("nii header cut", "cut.nii", nii[:200])
    put("nii wrong magic", "magic.nii", _patched(nii, 344, b"XXXX"))
    put(
        "nii header shape too big",
        "lies.nii",
        _patched(nii, 40, struct.pack("<8h", 3, 16, 16, 16, 1, 1, 1, 1)),
    )
    put(
        "nii absurd dims",
        "absurd.nii",
        _patched(nii, 40, struct.pack("<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1)),
    )
    put("nii negative dims", "neg.nii", _patched(nii, 40, struct.pack("<8h", 3, -8, 8, 8, 1, 1, 1, 1)))
    put("nii dim[0] = 9", "ndim9.nii", _patched(nii, 40, struct.pack("<8h", 9, 8, 8, 8, 1, 1, 1, 1)))
    put("nii unknown datatype", "dtype.nii", _patched(nii, 70, struct.pack("<h", 1234)))
    put("nii data offset beyond the file", "offset.nii", _patched(nii, 108, struct.pack("<f", 1e9)))
    put("nii 0 bytes", "empty.nii", b"")
    nib.save(nib.Nifti1Image(good, np.eye(4)), root / "good.nii.gz")
    gz = (root / "good.nii.gz").read_bytes()
    put("nii.gz truncated", "trunc.nii.gz", gz[: len(gz) // 2])
    put("nii.gz not gzip", "notgz.nii.gz", b"not gzip at all " * 20)
    put("nii.gz garbage inside", "junk.nii.gz", gzip.compress(b"\0" * 100))

    put("h5 garbage", "junk.h5", b"not hdf5" * 100)
    with h5py.File(root / "good.h5", "w") as h5:
        h5.create_dataset("v", data=good)
    h5 = (root / "good.h5").read_bytes()
    put("h5 truncated", "trunc.h5", h5[: len(h5) // 2])
    with h5py.File(root / "two.h5", "w") as h5:
        h5.create_dataset("a", data=good)
        h5.create_dataset("b", data=good)
    c["h5 two datasets, none named"] = root / "two.h5"
    c["h5 dataset missing"] = f"{root / 'good.h5'}:/nothing"
    with h5py.File(root / "strings.h5", "w") as h5:
        h5.create_dataset("s", data=np.array([b"ab", b"cd"]))
    c["h5 strings"] = root / "strings.h5"
    with h5py.File(root / "compound.h5", "w") as h5:
        h5.create_dataset("c", data=np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
    c["h5 compound records"] = root / "compound.h5"
    with h5py.File(root / "scalar.h5", "w") as h5:
        h5.create_dataset("s", data=3.0)
    c["h5 scalar"] = root / "scalar.h5"
    with h5py.File(root / "empty_ds.h5", "w") as h5:
        h5.create_dataset("e", shape=(0, 8, 8), dtype="f4")
    c["h5 empty dataset"] = root / "empty_ds.h5"
    with h5py.File(root / "bad_level.h5", "w") as h5:  # 8 -> 5 is no integer factor, down or up
        h5.create_dataset("levels/0", data=good)
        h5.create_dataset("levels/1", data=good[:5, :5, :5])
    c["h5 level not dividing the base"] = f"{root / 'bad_level.h5'}:/levels"

    put("tif garbage", "junk.tif", b"II*\x00" + b"\xff" * 100)
    tifffile.imwrite(root / "good.tif", good)
    tif = (root / "good.tif").read_bytes()
    put("tif truncated", "trunc.tif", tif[: len(tif) // 2])
    put("tif 0 bytes", "empty.tif", b"")

    zarr = root / "badjson.zarr"
    zarr.mkdir(exist_ok=True)
    (zarr / ".zarray").write_text("{not json")
    c["zarr bad metadata"] = zarr
    (root / "empty.zarr").mkdir(exist_ok=True)
    c["zarr empty folder"] = root / "empty.zarr"
    zarr = root / "short_chunk.zarr"
    zarr.mkdir(exist_ok=True)
    meta = {"zarr_format": 2, "shape": list(GRID), "chunks": [4, 4, 4], "dtype": "<f4", "compressor": None,
            "fill_value": 0, "order": "C", "filters": None}  # fmt: skip
    (zarr / ".zarray").write_text(json.dumps(meta))
    for i in range(2):
        for j in range(2):
            for k in range(2):
                (zarr / f"{i}.{j}.{k}").write_bytes(b"\x01" * 7)  # each chunk needs 256 bytes
    c["zarr chunk of the wrong size"] = zarr
    zarr = root / "bad_level.zarr"
    zarr.mkdir(exist_ok=True)
    (zarr / ".zgroup").write_text('{"zarr_format": 2}')
    _raw_zarr(zarr / "0")
    _raw_zarr(zarr / "1", grid=(5, 5, 5), chunks=(5, 5, 5))
    c["zarr level not dividing the base"] = zarr
    return c


def odd_volumes(root: Path) -> dict[str, Path]:
    """Readable volumes that are odd: non-finite voxels, constant, one voxel, 2-D, 5-D."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    good = np.random.default_rng(1).normal(size=GRID).astype(np.float32)
    c = {}
    # cpic reads only the voxels its pivots need, so a bad voxel is met when read: these are spread
    # so that every 3^3 patch, and one voxel in 8, holds one (whatever pivots a run selects)
    nan = good.copy()
    nan[::2, ::2, ::2] = np.nan
    np.save(root / "nan.npy", nan)
    c["NaN voxels"] = root / "nan.npy"
    inf = good.copy()
    inf[1::2, 1::2, 1::2] = np.inf
    np.save(root / "inf.npy", inf)
    c["Inf voxels"] = root / "inf.npy"
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "nan.nii.gz")
    c["nii.gz NaN voxels"] = root / "nan.nii.gz"
    np.save(root / "one.npy", np.ones((1, 1, 1), np.float32))
    c["1 voxel"] = root / "one.npy"
    np.save(root / "flat.npy", good[0])
    c["2-D"] = root / "flat.npy"
    np.save(root / "five.npy", np.zeros((2, 2, *GRID), np.float32))
    c["5-D"] = root / "five.npy"
    return c


def manifests(root: Path, volumes: list[str]) -> dict[str, tuple[Path, str]]:
    """Bad CSV manifests over good ``volumes`` (names relative to ``root``): ``{case: (path, needle)}``
    where ``needle`` must appear in the one-line message."""
    root.mkdir(parents=True, exist_ok=True)
    a, b, c_ = volumes[:3]
    texts = {
        "empty file": ("", "no rows"),
        "header only": ("path,label\n", "no rows"),
        "no path column": (f"file,label\n{a},a\n{b},b\n", "'path'"),
        "no label column": (f"path,diagnosis\n{a},a\n{b},b\n", "'label'"),
        "missing path": (f"path,label\n{a},a\nnot_there.npy,b\n", "not_there.npy"),
        "empty path cell": (f"path,label\n{a},a\n,b\n", "row 3"),
        "duplicate path": (f"path,label\n{a},a\n{b},b\n{a},b\n", a),
        "empty label": (f"path,label\n{a},a\n{b},\n", "row 3"),
        "short row": (f"path,label\n{a},a\n{b}\n", "row 3"),
        "long row": (f"path,label\n{a},a\n{b},b,surplus\n", "row 3"),
        "single class": (f"path,label\n{a},a\n{b},a\n{c_},a\n", "single class"),
        "binary garbage": ("\x00\xff\xfe garbage".encode("latin1"), "manifest"),
        "a directory": (None, "is a directory"),
        "labels differing by case": (f"path,label\n{a},Tumour\n{b},tumour\n{c_},x\n", "'tumour' (row 3)"),
        "labels differing by spaces": (f"path,label\n{a},tumour\n{b},tumour \n{c_},x\n", "two ways"),
        "huge class id": (f"path,label\n{a},0\n{b},1000000000\n", "class id 1000000000"),
        "negative class id": (f"path,label\n{a},0\n{b},-1\n", "class id -1"),
        "a FIFO (would block)": ("fifo", "FIFO"),
    }
    out = {}
    for name, (text, needle) in texts.items():
        path = root / (name.replace(" ", "_") + ".csv")
        if text is None:
            path.mkdir(exist_ok=True)
        elif text == "fifo":
            os.mkfifo(path)
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        out[name] = (path, needle)
    return out


def broken_models(root: Path, model: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of the model ``model`` (``.safetensors`` + ``.json``): ``{case: (path, needle)}``."""
    import safetensors.torch
    import torch

    from cpic.train.checkpoint import _sha256
    from tests.helpers import reseal

    root.mkdir(parents=True, exist_ok=True)
    st, js = (
        model.with_suffix(".safetensors").read_bytes(),
        json.loads(model.with_suffix(".json").read_text()),
    )
    tensors = safetensors.torch.load_file(model.with_suffix(".safetensors"))
    out = {}

    def write(
        name: str,
        st_bytes: bytes | None,
        record: dict | None,
        needle: str,
        rehash: bool = True,
        seal: bool = True,
    ):
        base = root / name.replace(" ", "_").replace("/", "_")
        (base.parent / (base.name + ".safetensors")).write_bytes(st if st_bytes is None else st_bytes)
        record = json.loads(json.dumps(js if record is None else record))
        if rehash and st_bytes is not None:
            record["sha256"] = _sha256(base.parent / (base.name + ".safetensors"))
        json_path = base.parent / (base.name + ".json")
        json_path.write_text(json.dumps(record))
        if seal and isinstance(record.get("meta"), dict) and record["meta"] != js["meta"]:
            reseal(json_path, record)  # a crafted file that passes the seal, for the checks behind it
        out[name] = (base, needle)

    def with_tensors(new: dict, meta_edit=None) -> tuple[bytes, dict]:
        tmp = root / "tmp.safetensors"
        safetensors.torch.save_file(new, tmp, metadata=sealed(js["meta"]))
        record = json.loads(json.dumps(js))
        if meta_edit:
            meta_edit(record["meta"])
        return tmp.read_bytes(), record

    write("corrupted bytes", _patched(st, 200, b"\0garbage\0"), None, "sha256", rehash=False)
    write("truncated tensors", st[: len(st) // 2], None, "sha256", rehash=False)
    write("corrupted bytes, hash updated", _patched(st, 20, b"\xff" * 40), None, "safetensors")

    def meta_with(**changes) -> dict:
        return {**js, "meta": {**js["meta"], **changes}}

    def config_with(**changes) -> dict:
        return meta_with(config={**js["meta"]["config"], **changes})

    write("wrong checkpoint version", None, {**js, "version": 99}, "version 99")
    write("wrong model version", None, meta_with(version=1), "version 1")
    write("config edited, not sealed", None, config_with(rank=3), "sealed", seal=False)
    write("not a cpic file", None, {**js, "format": "something-else"}, "not a cpic-checkpoint")
    write("training checkpoint, not a model", None, meta_with(format="x"), "model file")
    payload = pickle.dumps({"weights": [1, 2, 3]})  # a pickle where safetensors should be
    write("pickle payload", payload, None, "safetensors")
    torch_file = root / "torch.pt"
    torch.save({"w": torch.ones(2)}, torch_file)
    write("torch.save zip-pickle payload", torch_file.read_bytes(), None, "safetensors")
    first = sorted(tensors)[0]
    new = dict(tensors)
    new[first] = torch.zeros(tuple(n + 1 for n in tensors[first].shape))
    write("tensor of the wrong shape", *with_tensors(new), "shape")
    new = dict(tensors)
    new[first] = tensors[first].to(torch.float64)
    write("tensor of the wrong dtype (float64)", *with_tensors(new), "dtype")
    new = dict(tensors)
    new[first] = tensors[first].to(torch.int32)
    write("tensor of the wrong dtype (int32)", *with_tensors(new), "dtype")
    new = dict(tensors)
    del new[first]
    write("tensor missing", *with_tensors(new), "missing")
    new = {**tensors, "intruder": torch.zeros(3)}
    write("unexpected tensor", *with_tensors(new), "unexpected")
    new = dict(tensors)
    new[first] = torch.full_like(tensors[first], float("nan"))
    write("NaN weights", *with_tensors(new), "non-finite")
    write("config with rank 0", None, config_with(rank=0), "rank")
    write("config with a string grid", None, config_with(grid_shape="big"), "configuration")
    write(
        "config missing",
        None,
        {**js, "meta": {k: v for k, v in js["meta"].items() if k != "config"}},
        "config",
    )
    write("metadata not an object", None, {**js, "meta": [1, 2]}, "no metadata object")
    (root / "bad_json.safetensors").write_bytes(st)
    (root / "bad_json.json").write_text("{ not json")
    out["metadata not JSON"] = (root / "bad_json", "not valid JSON")
    (root / "only_json.json").write_text(json.dumps(js))
    out["tensor file missing"] = (root / "only_json", "do not exist")
    out["model file missing"] = (root / "nothing_here", "does not exist")
    (root / "a_dir.safetensors").mkdir(exist_ok=True)
    (root / "a_dir.json").mkdir(exist_ok=True)
    out["model paths are folders"] = (root / "a_dir", "a_dir")
    return out


def broken_compressed(root: Path, file: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of the file ``cpic compress -o file`` wrote (a lattice method):
    ``{case: (path, needle)}``; the resealed ones carry a matching sha256, so the check they
    meet is the one named."""
    import safetensors
    import safetensors.torch
    import torch

    from cpic.implicit.files import _sha256

    root.mkdir(parents=True, exist_ok=True)
    tensors = safetensors.torch.load_file(str(file))
    with safetensors.safe_open(str(file), "pt") as f:
        meta = json.loads(f.metadata()["cpic"])
    raw = file.read_bytes()
    out = {}

    def write(name: str, needle: str, new_tensors: dict | None = None, new_meta: dict | None = None,
              data: bytes | None = None) -> None:  # fmt: skip
        path = root / name.replace(" ", "_")
        if data is not None:
            path.write_bytes(data)
        else:
            t = tensors if new_tensors is None else new_tensors
            m = {**(meta if new_meta is None else new_meta), "sha256": _sha256(t)}
            safetensors.torch.save_file(t, str(path), metadata={"cpic": json.dumps(m)})
        out[name] = (path, needle)

    values, ids = tensors["values"], tensors["ids"]
    write("values with NaN", "NaN", {**tensors, "values": torch.full_like(values, float("nan"))})
    write("ids outside the grid", "outside the grid", {**tensors, "ids": ids + 10**6})
    write("ids missing", "inconsistent", {"values": values})
    write("values of the wrong length", "do not pair", {**tensors, "values": values[:-1].contiguous()})
    write("another version", "version", new_meta={**meta, "version": 7})
    write("unknown method", "unknown method", new_meta={**meta, "method": "fft"})
    write("tensors altered", "sha256", data=raw[:-4] + bytes(4 * [255]))
    write("truncated", "not a compressed volume", data=raw[: len(raw) // 2])
    write("pickle payload", "not a compressed volume", data=pickle.dumps({"values": [1.0]}))
    return out


def gzip_bomb(path: Path, shape=(1024, 1024, 1024), dtype="float32") -> Path:
    """A valid ``.nii.gz`` whose header declares ``shape`` of ``dtype`` and whose zero voxels
    are all there (4 GiB for the default) in about 4 MB: deflate blocks of 1 MiB of zeros after
    a full flush are identical, so one is compressed and repeated. Its ISIZE trailer is the
    size mod 2^32 (352 bytes for the default), so only the header says how big it is."""
    import zlib

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    head = header.binaryblock + b"\0" * 4  # no extensions; voxels at offset 352
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    zeros = bytes(1 << 20)
    assert size % len(zeros) == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = zlib.crc32(head)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        fh.write(deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH))
        block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(size // len(zeros)):
            fh.write(block)
            crc = zlib.crc32(zeros, crc)
        fh.write(deflate.flush())
        fh.write(struct.pack("<II", crc, (len(head) + size) % 2**32))
    return path


def _raw_zarr(folder: Path, grid=GRID, chunks=(4, 4, 4), write_chunks: bool = True) -> Path:
    """A Zarr v2 array of float32 stored raw (no compressor): chunk ``i.j.k`` holds the value i+j+k."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"zarr_format": 2, "shape": list(grid), "chunks": list(chunks), "dtype": "<f4", "compressor": None,
            "fill_value": 0, "order": "C", "filters": None}  # fmt: skip
    (folder / ".zarray").write_text(json.dumps(meta))
    if write_chunks:
        for i, j, k in np.ndindex(*(g // c for g, c in zip(grid, chunks))):
            (folder / f"{i}.{j}.{k}").write_bytes(np.full(chunks, i + j + k, "<f4").tobytes())
    return folder


def hostile_volumes(root: Path) -> dict[str, tuple[Path | str, str]]:
    """Volumes that reach for files the user did not name, or declare more memory than a
    budget allows: ``{case: (path, needle)}``, ``needle`` in the one-line refusal. The memory
    cases are refused under a budget of 512 MiB (``--memory-budget 512M``)."""
    import h5py
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    good = np.random.default_rng(2).normal(size=GRID).astype(np.float32)
    c: dict[str, tuple[Path | str, str]] = {}
    with h5py.File(root / "ext_passwd.h5", "w") as h5:  # the bytes of /etc/passwd as voxels
        h5.create_dataset("v", shape=(4, 4, 4), dtype="u1", external=[("/etc/passwd", 0, 64)])
    c["h5 external storage in /etc/passwd"] = (root / "ext_passwd.h5", "external raw storage in /etc/passwd")
    (root / "outside.bin").write_bytes(good.tobytes())
    with h5py.File(root / "ext_raw.h5", "w") as h5:
        h5.create_dataset("v", shape=GRID, dtype="f4", external=[(str(root / "outside.bin"), 0, good.nbytes)])
    c["h5 external storage in another file"] = (root / "ext_raw.h5", "external raw storage")
    if not (root / "fifo.bin").exists():
        os.mkfifo(root / "fifo.bin")
    with h5py.File(root / "ext_fifo.h5", "w") as h5:
        h5.create_dataset("v", shape=GRID, dtype="f4", external=[(str(root / "fifo.bin"), 0, good.nbytes)])
    c["h5 external storage in a FIFO"] = (root / "ext_fifo.h5", "external raw storage")
    with h5py.File(root / "target.h5", "w") as h5:
        h5.create_dataset("v", data=good)
    with h5py.File(root / "ext_link.h5", "w") as h5:
        h5["v"] = h5py.ExternalLink("target.h5", "/v")
    c["h5 external link"] = (f"{root / 'ext_link.h5'}:/v", "external link")
    with h5py.File(root / "ext_link_group.h5", "w") as h5:  # a soft link into an external group
        h5["g"] = h5py.ExternalLink("target.h5", "/")
        h5["v"] = h5py.SoftLink("/g/v")
    c["h5 soft link through an external link"] = (f"{root / 'ext_link_group.h5'}:/v", "external link")
    layout = h5py.VirtualLayout(shape=GRID, dtype="f4")
    layout[:] = h5py.VirtualSource(str(root / "target.h5"), "v", shape=GRID)
    with h5py.File(root / "virtual.h5", "w") as h5:
        h5.create_virtual_dataset("v", layout)
    c["h5 virtual dataset"] = (root / "virtual.h5", "virtual dataset")
    zarr = _raw_zarr(root / "link_out.zarr")
    (root / "outside_chunk.bin").write_bytes(np.full((4, 4, 4), 7, "<f4").tobytes())
    (zarr / "1.1.1").unlink()
    (zarr / "1.1.1").symlink_to(root / "outside_chunk.bin")
    c["zarr chunk symlinked out of the store"] = (zarr, "symlink(s) out of the store")
    zarr = _raw_zarr(root / "fifo_chunk.zarr")
    (zarr / "0.0.1").unlink()
    os.mkfifo(zarr / "0.0.1")
    c["zarr chunk that is a FIFO"] = (zarr, "FIFO")
    link = root / "zero.npy"
    if not link.is_symlink():
        link.symlink_to("/dev/zero")
    c["a device file (/dev/zero) as a volume"] = (link, "character device")
    c["nii.gz bomb: 4 GiB of zeros in 4 MB"] = (gzip_bomb(root / "bomb.nii.gz"), "4.0 GiB")
    nib.save(nib.Nifti1Image(good, np.eye(4)), root / "huge_header.nii.gz")
    data = bytearray(gzip.decompress((root / "huge_header.nii.gz").read_bytes()))
    data[40:56] = struct.pack("<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1)
    (root / "huge_header.nii.gz").write_bytes(gzip.compress(bytes(data)))
    c["nii.gz header declaring 32767^3 voxels"] = (root / "huge_header.nii.gz", "128.0 TiB")
    with h5py.File(root / "huge_chunk.h5", "w") as h5:  # nothing written: the file stays small
        side = (1024, 1024, 1024)
        h5.create_dataset("v", shape=side, dtype="u1", chunks=side, compression="gzip")
    c["h5 one 1 GiB compressed chunk"] = (root / "huge_chunk.h5", "one chunk")
    side = (2048, 2048, 2048)
    _raw_zarr(root / "huge_chunk.zarr", grid=side, chunks=side, write_chunks=False)
    c["zarr one 32 GiB chunk"] = (root / "huge_chunk.zarr", "one chunk")
    return c
