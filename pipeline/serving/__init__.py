"""A local stand-in for Databricks Model Serving: same routes, wire shapes, errors and auth.

Run it with `python -m pipeline.serving --port P --model echo`; drive it from tests and scripts
through `pipeline.serving.process.LocalEndpoint`. This package deliberately imports nothing at
package level so `python -m pipeline.serving.process` runs without a double-import warning.
"""
