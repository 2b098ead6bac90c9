"""Packs one static binary as a one-layer OCI image archive that `ctr images import` accepts.

    python3 oci_archive.py BINARY NAME:TAG OUT.tar

The layer holds the binary at /<basename>, the entrypoint runs it. Deterministic: same binary,
same archive (fixed mtimes, owners and gzip header), so the image digest is a content key.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def oci_archive(binary: bytes, entry: str, ref: str) -> bytes:
    layer_tar = _tar_bytes([(entry, binary, 0o755)])
    layer = gzip.compress(layer_tar, mtime=0)
    layer_digest, _ = _blob(layer)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/" + entry]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    config_digest, _ = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest, _ = _blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest),
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}],
    }, sort_keys=True).encode()
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644), ("index.json", index, 0o644)]
    for blob in (layer, config, manifest):
        files.append(("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob, 0o644))
    return _tar_bytes(files)


if __name__ == "__main__":
    binary_path, ref, out = sys.argv[1:4]
    with open(binary_path, "rb") as f:
        data = oci_archive(f.read(), os.path.basename(binary_path), ref)
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.replace(out + ".tmp", out)
