"""selector stage."""
