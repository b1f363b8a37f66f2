"""Small facts about a wasm binary that the worker needs before it builds the plugin."""

from __future__ import annotations

_MAGIC = b"\0asm"
_EXPORT_SECTION = 7
_FUNC_KIND = 0


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("unexpected end of wasm data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u32(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise ValueError("LEB128 value too long")

    def name(self) -> bytes:
        length = self.u32()
        if self.pos + length > self.end:
            raise ValueError("name runs past its section")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value


def exported_functions(wasm: bytes) -> set[str]:
    """Names of the functions a wasm module exports; raises ValueError on a corrupt binary."""
    if wasm[:4] != _MAGIC or len(wasm) < 8:
        raise ValueError("not a wasm binary")
    reader = _Reader(wasm, 8)
    names: set[str] = set()
    while reader.pos < reader.end:
        section = reader.byte()
        size = reader.u32()
        start = reader.pos
        if start + size > reader.end:
            raise ValueError("section runs past the end of the module")
        if section == _EXPORT_SECTION:
            body = _Reader(wasm, start, start + size)
            for _ in range(body.u32()):
                name = body.name()
                kind = body.byte()
                body.u32()
                if kind == _FUNC_KIND:
                    names.add(name.decode("utf-8", "replace"))
        reader.pos = start + size
    return names


def exports_run(wasm: bytes) -> bool:
    """Whether the module exports a function named ``run``.

    As in the reference, a binary that cannot be parsed counts as exporting ``run`` (it then gets
    no call timeout; building the plugin will report the real problem).
    """
    try:
        return "run" in exported_functions(wasm)
    except ValueError:
        return True
