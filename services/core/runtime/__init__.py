"""The common service runtime: settings, logging, health, metrics, graceful shutdown."""
