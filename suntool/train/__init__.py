"""suntool.train (see the modules of this package)."""
