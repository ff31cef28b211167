"""Artefacts and execution: write, verify, load and run compiled models."""
