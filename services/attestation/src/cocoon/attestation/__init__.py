"""Attestation service: TDX quote verification, the policy registry and signed verdicts."""
