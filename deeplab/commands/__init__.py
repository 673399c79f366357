"""Command-line entry points: parse arguments, one library call, print."""
