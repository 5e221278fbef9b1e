"""The commands (``python -m framework.X`` runs ``framework/X.py``, a thin entry point into the module of the same name here) and ``cli``, what they share."""
