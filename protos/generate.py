"""Regenerates the checked-in protobuf/gRPC modules from protos/*.proto (used by `make protos` and a test).

protoc runs with the virtual include path `eaas/protos=protos`, so the .proto files are registered as
`eaas/protos/<name>.proto` and grpc_tools writes `from eaas.protos import <name>_pb2` itself: no
rewriting of import lines is needed. Output goes to a temporary tree, then the flat files are copied here.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
VIRTUAL_PACKAGE = "eaas/protos"


def generated_files(out_dir: Path) -> list[Path]:
    """Run protoc on every protos/*.proto into out_dir (flat); return the files written."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    protos = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory(prefix="eaas-protoc-") as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        args = ["protoc", f"-I{VIRTUAL_PACKAGE}={PROTO_DIR}", f"-I{include}",
                f"--python_out={tmp}", f"--grpc_python_out={tmp}", f"--pyi_out={tmp}", *map(str, protos)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted((Path(tmp) / VIRTUAL_PACKAGE).iterdir()):
            shutil.copyfile(f, out_dir / f.name)
            written.append(out_dir / f.name)
    return written


if __name__ == "__main__":
    for path in generated_files(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
