"""dlight-style schedule rules for the CPU, one module per op class, applied by ``codegen.cpu.build``."""
