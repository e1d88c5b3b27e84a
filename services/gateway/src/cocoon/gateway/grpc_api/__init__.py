"""The gateway's gRPC inference API (inference.proto), beside the HTTP one."""
