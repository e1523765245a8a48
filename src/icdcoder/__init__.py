"""icdcoder: automated ICD coding of clinical notes under one protocol and one metric set.

``import icdcoder`` stays light: heavy optional dependencies (torch, transformers, fastapi) are
imported inside the modules that need them.
"""

__version__ = "0.1.0"
