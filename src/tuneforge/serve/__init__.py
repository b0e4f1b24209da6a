"""Serving: an OpenAI-compatible gateway over one base model and many adapter versions."""
