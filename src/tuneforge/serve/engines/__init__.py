"""Inference engines behind the gateway; each implements `tuneforge.serve.engines.base.Engine`."""
