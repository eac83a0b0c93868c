"""Diagnostics computed alongside training (supervision complexity, bound terms); one module each."""
