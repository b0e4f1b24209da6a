"""Production feedback loop: A/B analysis, guardrails, drift statistics and retrain triggers."""
