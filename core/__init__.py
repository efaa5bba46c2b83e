"""wwts core: discovery, decoding, device choice, models, tasks and the batching engine.

Nothing here imports typer or rich; the engine yields results and never prints or writes files.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wwts")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
