"""Batch chat inference over Spark tables against Databricks Model Serving endpoints."""

__version__ = "0.1.0"
