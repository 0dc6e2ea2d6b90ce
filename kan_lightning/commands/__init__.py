"""The command-line entry points (kan-eval, kan-symbolic, kan-bench, kan-sweep-summary and the
reports): each parses its arguments or composes its config and calls the library."""
