"""The command line, `python -m demo train|sweep|list`: flags built from RunConfig, a reporter,
and files written so that a finished run is never lost."""
