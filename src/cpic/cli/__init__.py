"""Command-line layer: argument parsing and printing; the algorithms live below it."""
