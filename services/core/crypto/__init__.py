"""Crypto envelopes: HPKE-sealed requests, AEAD response streams, signed receipts and claims."""
