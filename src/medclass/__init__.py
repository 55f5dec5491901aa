"""medclass: train, evaluate and use image classifiers for medical images.

Stages, each a package, with dependencies pointing one way:
``config`` <- ``data`` <- ``models`` <- ``engine`` <- ``evaluation`` <- ``cli``.
"""

__version__ = "0.1.0"
