"""pos2distill: measure and remove positional bias in LLMs (Pos2Distill, EMNLP 2025)."""

__version__ = "0.1.0"
