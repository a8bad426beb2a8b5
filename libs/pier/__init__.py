"""Pier: turn a Python function into a production model API.

Kept empty on purpose: `pier.harness` ships into model images and must import without the
platform's dependencies.
"""
