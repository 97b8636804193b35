"""whyprobe: explains why things are slow and what tools really do, from kernel evidence."""

__version__ = "0.1.0"
__all__ = ["__version__"]
