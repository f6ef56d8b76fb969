"""orca-recipe: one YAML recipe for the Orca-Math pipeline."""

__version__ = "0.1.0"
