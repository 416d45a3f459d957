"""The builder layer: decorators, pipelines, windows and source/sink configs (no runtime here)."""
