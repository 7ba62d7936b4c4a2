"""Training and evaluation: one loop serves `train`, `demo` and the diagnostics' probes."""
