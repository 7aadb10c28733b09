"""alignsuite."""
