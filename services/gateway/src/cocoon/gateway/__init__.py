"""Gateway service: the OpenAI-compatible client API, sealing and stream opening."""
