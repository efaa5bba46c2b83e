"""wwts command line: typer commands and the rich progress display."""
