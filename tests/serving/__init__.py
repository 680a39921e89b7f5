"""Tests of pipeline.serving; a package so module basenames cannot clash with other suites."""
