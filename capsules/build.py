"""Build C and WAT capsules to WebAssembly.

Usage::

    python capsules/build.py [--install DIR] [--force] PATH...

Each PATH is a capsule directory (it holds ``Capsule.toml``) or a directory whose immediate
subdirectories are capsule directories. For each capsule, the ``file`` of its first
``[[component]]`` (e.g. ``counter.wasm``) is built from ``<stem>.c`` (with ``python -m ziglang cc``
and the headers of ``capsules/include/``: ``astrid.h``, ``astrid_json.h``) or ``<stem>.wat``
(with ``wasmtime.wat2wasm``) in the same directory, when it is missing or older than its source
or a header, or with ``--force``.
``--install DIR`` copies ``Capsule.toml`` and the wasm of each capsule into
``DIR/<package.name>/``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Directory holding ``astrid.h``.
INCLUDE_DIR = Path(__file__).resolve().parent / "include"
MANIFEST = "Capsule.toml"

#: Compiler flags for C capsules (``spec/perf-baselines.md`` §6).
C_FLAGS = ("--target=wasm32-freestanding", "-nostdlib", "-O2", "-s", "-Wl,--no-entry")

#: Seconds a single compiler run may take.
COMPILE_TIMEOUT = 300


class BuildError(Exception):
    """An expected build failure: reported as one message, never as a traceback."""


@dataclass(frozen=True, slots=True)
class Capsule:
    """What the build needs from a capsule directory."""

    directory: Path
    name: str
    wasm: Path

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST


def read_capsule(directory: Path) -> Capsule:
    """Read ``Capsule.toml`` of ``directory``: package name and first component file."""
    manifest = directory / MANIFEST
    try:
        with manifest.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise BuildError(f"{directory}: no {MANIFEST}") from None
    except OSError as exc:
        raise BuildError(f"{manifest}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{manifest}: invalid TOML: {exc}") from None

    package = data.get("package")
    name = package.get("name") if isinstance(package, dict) else None
    if not isinstance(name, str) or not name:
        raise BuildError(f"{manifest}: [package] name is missing")

    components = data.get("component")
    if not isinstance(components, list) or not components:
        raise BuildError(f"{manifest}: no [[component]]")
    first = components[0]
    file = None
    if isinstance(first, dict):
        file = first.get("file", first.get("entrypoint"))
    if not isinstance(file, str) or not file:
        raise BuildError(f"{manifest}: the first [[component]] has no file")
    wasm = Path(file) if Path(file).is_absolute() else directory / file
    return Capsule(directory=directory, name=name, wasm=wasm)


def find_source(capsule: Capsule) -> Path:
    """The ``<stem>.c`` or ``<stem>.wat`` next to the component file."""
    stem = capsule.wasm.stem
    candidates = [capsule.directory / f"{stem}{suffix}" for suffix in (".c", ".wat")]
    found = [path for path in candidates if path.is_file()]
    if not found:
        names = " or ".join(path.name for path in candidates)
        raise BuildError(f"{capsule.name}: no source ({names}) in {capsule.directory}")
    if len(found) > 1:
        raise BuildError(f"{capsule.name}: both {stem}.c and {stem}.wat exist; keep one")
    return found[0]


def _needs_build(out: Path, inputs: Sequence[Path]) -> bool:
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return True
    return any(path.stat().st_mtime_ns > built for path in inputs if path.exists())


def _compile_c(source: Path, out: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *C_FLAGS,
        "-I",
        str(INCLUDE_DIR),
        "-o",
        str(out),
        str(source),
    ]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{source}: compiler timed out after {COMPILE_TIMEOUT} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        if "No module named ziglang" in detail:
            detail = "the ziglang package is not installed (pip install ziglang)"
        raise BuildError(f"{source}: compilation failed (exit {proc.returncode}):\n{detail}")


def _compile_wat(source: Path, out: Path) -> None:
    try:
        import wasmtime
    except ImportError:
        raise BuildError(
            f"{source}: the wasmtime package is needed for WAT (pip install wasmtime)"
        ) from None
    try:
        text = source.read_text(encoding="utf-8")
        wasm = bytes(wasmtime.wat2wasm(text))
    except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as exc:
        raise BuildError(f"{source}: {exc}") from None
    out.write_bytes(wasm)


def _compile(source: Path, out: Path) -> None:
    """Compile into a temporary file next to ``out`` so a failure never leaves a broken wasm."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if source.suffix == ".c":
            _compile_c(source, tmp)
        else:
            _compile_wat(source, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _build(capsule: Capsule, force: bool) -> bool:
    """Build ``capsule`` if needed; True if it was built."""
    source = find_source(capsule)
    inputs = [source, *sorted(INCLUDE_DIR.glob("*.h"))] if source.suffix == ".c" else [source]
    if not force and not _needs_build(capsule.wasm, inputs):
        return False
    _compile(source, capsule.wasm)
    return True


def build_capsule(dir: Path, force: bool = False) -> Path:
    """Build the first component of the capsule in ``dir`` if needed; return the wasm path.

    Raises :class:`BuildError` for expected failures (no manifest, bad TOML, no source,
    compiler error).
    """
    capsule = read_capsule(Path(dir))
    _build(capsule, force)
    return capsule.wasm


def install_capsule(directory: Path, dest_root: Path) -> Path:
    """Copy ``Capsule.toml`` and the built wasm of ``directory`` to ``dest_root/<name>/``."""
    capsule = read_capsule(directory)
    if not capsule.wasm.is_file():
        raise BuildError(f"{capsule.name}: {capsule.wasm} is not built")
    dest = dest_root / capsule.name
    try:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(capsule.manifest, dest / MANIFEST)
        wasm_dest = dest / capsule.wasm.relative_to(capsule.directory)
        wasm_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(capsule.wasm, wasm_dest)
    except ValueError:
        raise BuildError(
            f"{capsule.name}: component file {capsule.wasm} is outside the capsule directory"
        ) from None
    except OSError as exc:
        raise BuildError(f"{capsule.name}: install to {dest} failed: {exc}") from None
    return dest


def capsule_dirs(path: Path) -> list[Path]:
    """``path`` itself if it is a capsule directory, else its immediate capsule subdirectories."""
    if (path / MANIFEST).is_file():
        return [path]
    if not path.exists():
        raise BuildError(f"{path}: no such directory")
    if not path.is_dir():
        raise BuildError(f"{path}: not a capsule directory")
    found = sorted(child for child in path.iterdir() if (child / MANIFEST).is_file())
    if not found:
        raise BuildError(f"{path}: no {MANIFEST} here or in its subdirectories")
    return found


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build.py", description="Build C/WAT capsules to WebAssembly."
    )
    parser.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        type=Path,
        help="a capsule directory, or a directory of capsule directories",
    )
    parser.add_argument("--install", metavar="DIR", type=Path, help="copy built capsules here")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)

    failed = 0
    for path in args.paths:
        try:
            dirs = capsule_dirs(path)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for directory in dirs:
            try:
                capsule = read_capsule(directory)
                started = time.monotonic()
                if _build(capsule, args.force):
                    elapsed = time.monotonic() - started
                    size = _size(capsule.wasm.stat().st_size)
                    print(f"built {capsule.name} ({size}) in {elapsed:.2f} s")
                else:
                    print(f"up to date: {capsule.name}")
                if args.install is not None:
                    dest = install_capsule(directory, args.install)
                    print(f"installed {capsule.name} -> {dest}")
            except BuildError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
