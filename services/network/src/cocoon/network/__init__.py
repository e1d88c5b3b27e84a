"""`cocoon up`: runs the whole network on one machine as separate processes."""
