"""arvision: token-based autoregressive visual generation and understanding (HART, VILA-U)."""

__version__ = "0.1.0"
