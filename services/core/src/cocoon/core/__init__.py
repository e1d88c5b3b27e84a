"""The core package every service shares: bus, codec, catalog, crypto, telemetry, config."""
