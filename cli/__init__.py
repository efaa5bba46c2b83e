"""wwts command line: typer commands and the rich terminal display.

- ``app.py``: the ``wwts`` typer app and its commands (entry point ``wwts.cli.app:main``);
- ``options.py``: the options, their choices and ``--help`` panels;
- ``run_loop.py``: the one run loop of classify, caption, search and embed (``run_records``):
  progress, summary, interrupts, exit codes; ``sinks.py``: where each command's records go;
- ``search_commands.py``, ``results_commands.py`` (report, sort), ``store_commands.py``,
  ``conversions_commands.py``: the other commands;
- ``progress.py``, ``table.py``, ``console.py``, ``doctor_view.py``: what is drawn on the terminal.

Nothing imports ``cli`` (it is the top of the import graph), so this package exports nothing
itself; it does not import ``app`` either, so that ``python -m wwts.cli.app`` runs it only once.
"""

__all__: list[str] = []
