"""Kernel definitions, one module per family, each with its schedules."""
