"""suntool: split a causal LM into prefill and decode halves, train one, share the other.

Importing this package is free of side effects and does not import torch; the heavy
libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
