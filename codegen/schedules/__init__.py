"""Schedule rules for the ops around our kernels (dlight ``ScheduleRule`` s for the CPU), one module per op class."""
