"""lapo: Learning to Act without Actions (Schmidt & Jiang, ICLR 2024)."""

__version__ = "0.1.0"
