#!/usr/bin/env python3
"""The filter module's exports: keep only the callbacks the filter implements.

The proxy-wasm SDK exports every callback of the ABI (response headers, response body, log,
network filters, gRPC...). Envoy skips a callback the module does not export, but calls an
exported one on every request even when it does nothing: each call is an entry into the VM.

    wasm_exports.py strip KEEP IN OUT   rewrite IN's export section to the names listed in KEEP

KEEP holds one export name per line; `#` starts a comment. `strip` refuses a KEEP that names
an export IN does not have (a renamed SDK callback would otherwise vanish silently).
Only the export section changes; binaryen's wasm-opt then drops the code nothing reaches.
"""
import sys

MAGIC = b"\0asm\x01\0\0\0"
EXPORT_SECTION = 7


class WasmError(Exception):
    pass


def read_leb(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise WasmError("truncated or overlong LEB128")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def leb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sections(data):
    """(id, start of the section, start of its payload, end) of each section."""
    if not data.startswith(MAGIC):
        raise WasmError("not a wasm module (version 1)")
    pos = len(MAGIC)
    while pos < len(data):
        sid = data[pos]
        size, start = read_leb(data, pos + 1)
        end = start + size
        if end > len(data):
            raise WasmError(f"section {sid} runs past the end")
        yield sid, pos, start, end
        pos = end


def parse_exports(payload):
    """[(name, encoded entry)] of an export section's payload."""
    count, pos = read_leb(payload, 0)
    entries = []
    for _ in range(count):
        begin = pos
        length, pos = read_leb(payload, pos)
        name = payload[pos:pos + length].decode("utf-8")
        pos += length
        if pos >= len(payload):
            raise WasmError("truncated export entry")
        pos += 1  # kind
        _, pos = read_leb(payload, pos)  # index
        entries.append((name, payload[begin:pos]))
    if pos != len(payload):
        raise WasmError("trailing bytes in the export section")
    return entries


def strip(data, keep):
    out = bytearray(MAGIC)
    seen = False
    for sid, head, start, end in sections(data):
        if sid != EXPORT_SECTION:
            out += data[head:end]
            continue
        seen = True
        entries = parse_exports(data[start:end])
        missing = sorted(set(keep) - {name for name, _ in entries})
        if missing:
            raise WasmError("the module does not export " + ", ".join(missing))
        kept = [raw for name, raw in entries if name in keep]
        payload = leb(len(kept)) + b"".join(kept)
        out += bytes([EXPORT_SECTION]) + leb(len(payload)) + payload
    if not seen:
        raise WasmError("the module has no export section")
    return bytes(out)


def read_keep(path):
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name = line.split("#", 1)[0].strip()
            if name:
                names.append(name)
    return names


def main(argv):
    try:
        if len(argv) == 4 and argv[0] == "strip":
            keep, src, dst = argv[1:]
            with open(src, "rb") as f:
                data = f.read()
            stripped = strip(data, set(read_keep(keep)))
            with open(dst, "wb") as f:
                f.write(stripped)
            return 0
    except (OSError, WasmError, UnicodeDecodeError) as e:
        print(f"wasm_exports: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
