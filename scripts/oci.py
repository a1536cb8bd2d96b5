#!/usr/bin/env python3
"""The filter as an OCI image layout that Istio's image fetcher reads (`make oci`, `make oci-check`).

Istio (pkg/wasm/imagefetcher.go) reads two layouts; this writes the "compat" variant: an OCI
image manifest whose last (here: only) layer is `application/vnd.oci.image.layer.v1.tar+gzip`
holding a file named `plugin.wasm`. No container engine is involved: the blobs, the manifest and
`index.json` are written here, with the standard library only.

The output is reproducible: the tar entry and the gzip header carry fixed times, owners and
modes, so the manifest digest depends on the module's bytes alone. That digest is what a
WasmPlugin/TrafficExtension pins (`sha256:` field, or `oci://…@sha256:<digest>`).

    oci.py build --wasm target/introspection_filter.wasm --out target/oci --tag 0.1.0
    oci.py check --wasm target/introspection_filter.wasm --out target/oci

`check` asks skopeo (`skopeo inspect oci:<dir>`) and verifies every digest and size, the media
types, and that the layer's `plugin.wasm` is byte for byte the shipped module.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
PLUGIN_NAME = "plugin.wasm"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def layer_tar(wasm):
    """An uncompressed tar holding only plugin.wasm, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_NAME)
        info.size = len(wasm)
        info.mode = 0o444
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_fixed(data):
    """gzip with no file name and a zero mtime, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_blob(out, data):
    digest = sha256(data)
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def build(args):
    with open(args.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{args.wasm} is not a wasm module")
    tar = layer_tar(wasm)
    layer = gzip_fixed(tar)
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(tar)]},
        "config": {},
    }
    config_desc = dict(write_blob(tmp, canonical(config)), mediaType=CONFIG_TYPE)
    layer_desc = dict(
        write_blob(tmp, layer),
        mediaType=LAYER_TYPE,
        annotations={"org.opencontainers.image.title": PLUGIN_NAME},
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": {
            "org.opencontainers.image.title": "proconnect-introspection",
            "org.opencontainers.image.version": args.tag,
        },
    }
    manifest_desc = dict(write_blob(tmp, canonical(manifest)), mediaType=MANIFEST_TYPE)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": args.tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    digest = manifest_desc["digest"]
    print(f"OCI layout {args.out} (tag {args.tag}), Istio compat variant, layer {PLUGIN_NAME}")
    print(f"manifest digest: {digest}")
    print(f"  WasmPlugin/TrafficExtension: sha256: {digest.split(':', 1)[1]}")


def fail(message):
    sys.exit(f"oci-check: {message}")


def read_blob(out, desc):
    algo, _, hexdigest = desc["digest"].partition(":")
    if algo != "sha256":
        fail(f"unexpected digest algorithm in {desc['digest']}")
    with open(os.path.join(out, "blobs", "sha256", hexdigest), "rb") as f:
        data = f.read()
    if sha256(data) != hexdigest or len(data) != desc["size"]:
        fail(f"blob {desc['digest']} does not match its digest or size")
    return data


def skopeo(*argv):
    try:
        done = subprocess.run(["skopeo", *argv], capture_output=True, check=False)
    except FileNotFoundError:
        fail("skopeo is not installed (make oci-check installs it from Debian)")
    if done.returncode != 0:
        fail(f"skopeo {' '.join(argv)} failed:\n{done.stderr.decode(errors='replace')}")
    return done.stdout


def check(args):
    ref = "oci:" + args.out
    # What skopeo reads is what `skopeo copy` would push.
    raw = skopeo("inspect", "--raw", ref)
    inspected = json.loads(skopeo("inspect", ref))
    with open(os.path.join(args.out, "index.json"), "rb") as f:
        index = json.load(f)
    if len(index.get("manifests", [])) != 1:
        fail("index.json must name exactly one manifest")
    manifest_desc = index["manifests"][0]
    if "sha256:" + sha256(raw) != manifest_desc["digest"]:
        fail("the manifest skopeo reads is not the one index.json names")
    if inspected.get("Digest") != manifest_desc["digest"]:
        fail(f"skopeo reports digest {inspected.get('Digest')}, index.json {manifest_desc['digest']}")
    manifest = json.loads(read_blob(args.out, manifest_desc))
    if manifest.get("mediaType") != MANIFEST_TYPE or manifest["config"]["mediaType"] != CONFIG_TYPE:
        fail("not an OCI image manifest")
    read_blob(args.out, manifest["config"])
    layers = manifest.get("layers", [])
    if len(layers) != 1 or layers[-1]["mediaType"] != LAYER_TYPE:
        fail(f"expected one {LAYER_TYPE} layer (Istio's compat variant), got {layers}")
    layer = read_blob(args.out, layers[-1])
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        names = tar.getnames()
        if names != [PLUGIN_NAME]:
            fail(f"the layer must hold only {PLUGIN_NAME}, holds {names}")
        member = tar.extractfile(PLUGIN_NAME)
        packed = member.read() if member else b""
    with open(args.wasm, "rb") as f:
        shipped = f.read()
    if packed != shipped:
        fail(f"{PLUGIN_NAME} in the image is not byte for byte {args.wasm}")
    print(f"oci-check: {ref} OK: skopeo digest {inspected['Digest']}, one tar+gzip layer, "
          f"{PLUGIN_NAME} identical to {args.wasm} ({len(shipped)} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("--wasm", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()
    build(args) if args.command == "build" else check(args)


if __name__ == "__main__":
    main()
