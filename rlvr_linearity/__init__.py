"""rlvr-linearity: linear dynamics of RLVR training, measured and exploited."""

__version__ = "0.1.0"
