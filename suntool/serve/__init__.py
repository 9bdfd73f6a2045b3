"""suntool.serve (see the modules of this package)."""
