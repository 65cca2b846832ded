"""Modality plugins: one file per modality with its processor and encoders."""
