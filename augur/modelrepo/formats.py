"""What an artifact's bytes must look like for its kind, and that no file of a version is a
Python pickle: checked when a version is published and again before it is loaded.

A check reads a few bytes (a zip archive's member list for torch), imports no framework
and runs nothing; it catches a model file of the wrong kind and pickles, not every
malformed file (the probe process is what survives a parser that crashes on one).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from augur.modelrepo.spec import ARTIFACTS, KINDS, RepositoryError

# Pickle streams start with PROTO (0x80) and a protocol number; protocols 2 to 5 are what
# pickle.dump, joblib and torch.save write.
_PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}


def artifact_name(kind: str, artifact: Path) -> str:
    """The name a published artifact takes in its version folder: the kind's file with the
    artifact's suffix (model.json for an XGBoost JSON model), a plugin's artifact its own."""
    if kind not in KINDS:
        return artifact.name
    for name in ARTIFACTS[kind]:
        if Path(name).suffix == artifact.suffix:
            return name
    raise RepositoryError(
        f"{artifact}: a {kind} model is a {' or '.join(ARTIFACTS[kind])} file, "
        f"not {artifact.suffix or 'a file without a suffix'}"
    )


def check_version_folder(folder: Path) -> None:
    """Refuse a version any of whose files is a pickle (loading one runs code)."""
    for path in sorted(folder.iterdir()):
        if path.is_file():
            _refuse_pickle(path)


def check_artifact(kind: str, path: Path) -> None:
    """Refuse a pickle, or a file that is not of `kind`'s format, naming what it is."""
    _refuse_pickle(path)
    if kind not in KINDS:
        return  # a plugin's format is the plugin's to check
    with open(path, "rb") as f:
        head = f.read(16)
    expected, ok = _FORMATS[(kind, path.suffix)]
    if not ok(head):
        raise RepositoryError(
            f"{path}: not a {expected} ({_describe(head)}); a {kind} model's "
            f"{path.name} must be one"
        )
    if kind == "torch":
        _check_torch_archive(path, pt2=path.suffix == ".pt2")


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(2)
    if head in _PICKLE_PROTOCOLS:
        raise RepositoryError(
            f"{path}: is a Python pickle, which runs code when loaded; Augur loads no "
            f"pickles: save the model in its framework's own format"
        )


def _check_torch_archive(path: Path, pt2: bool) -> None:
    """A .pt2 whose weights or constants are pickled (torch.export.load would unpickle
    them with weights_only=False) is refused; so is a pickle member outside TorchScript's
    own (model.pt, read by TorchScript's restricted unpickler, for one more release)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not pt2:
                return
            if not any(n.endswith("/archive_format") for n in names):
                raise RepositoryError(
                    f"{path}: a zip archive but not torch.export's (no archive_format); "
                    f"save it with torch.export.save"
                )
            for name in names:
                if name.endswith(".pkl") or "/custom_objects/" in name:
                    raise RepositoryError(
                        f"{path}: holds {name}, a pickled object; torch.export models must "
                        f"hold tensors only"
                    )
                if name.endswith("_config.json"):
                    config = json.loads(archive.read(name)).get("config", {})
                    pickled = [k for k, v in config.items() if v.get("use_pickle")]
                    if pickled:
                        raise RepositoryError(
                            f"{path}: {pickled[0]} is stored as a pickle ({name}); "
                            f"torch.export models must hold plain tensors only"
                        )
    except (zipfile.BadZipFile, ValueError, AttributeError) as e:
        raise RepositoryError(f"{path}: not a readable torch archive: {e}") from None


def _describe(head: bytes) -> str:
    for name, ok in _FORMATS.values():
        if ok(head):
            return f"it looks like a {name}"
    return f"it starts with {head[:8]!r}"


_FORMATS = {
    ("lightgbm", ".txt"): ("LightGBM text model", lambda h: h.startswith(b"tree\n")),
    ("torch", ".pt2"): ("torch.export archive (zip)", lambda h: h.startswith(b"PK\x03\x04")),
    ("torch", ".pt"): ("TorchScript archive (zip)", lambda h: h.startswith(b"PK\x03\x04")),
    ("xgboost", ".ubj"): ("XGBoost UBJSON model", lambda h: h[:1] == b"{" and h[1:2] != b'"'),
    ("xgboost", ".json"): ("XGBoost JSON model", lambda h: h.lstrip()[:2] == b'{"'),
    ("catboost", ".cbm"): ("CatBoost model (.cbm)", lambda h: h.startswith(b"CBM1")),
    # an ONNX ModelProto begins with its ir_version (field 1, a varint: tag 0x08)
    ("onnx", ".onnx"): ("ONNX model", lambda h: h[:1] == b"\x08"),
}
