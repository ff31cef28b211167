"""The BitVert accelerator, simulated: its performance model and its bit-serial execution of programs."""
