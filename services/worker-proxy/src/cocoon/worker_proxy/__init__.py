"""Worker proxy: runs beside the inference engine inside the TEE."""
