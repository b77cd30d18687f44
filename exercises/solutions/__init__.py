"""Solutions of ``exercises/aip_exercises.py`` (same function names)."""
