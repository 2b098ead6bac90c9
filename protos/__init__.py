"""Generated gRPC/protobuf code (see protos/README.md for the command that regenerates it)."""
