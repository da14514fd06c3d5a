"""Evaluation protocols: comparison tables, linear paths between checkpoints, MTIL's sessions, routing, figures."""
