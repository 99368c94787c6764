"""Trifecta: run and scale the Industriverse Trifecta for many tenants."""

__version__ = "0.1.0"
