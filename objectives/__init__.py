"""Objective plugins: one file per objective family (pure functions, module, config, hook)."""
