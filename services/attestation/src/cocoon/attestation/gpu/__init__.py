"""NVIDIA GPU (Hopper confidential computing) attestation evidence: see verify.evaluate_gpu."""
