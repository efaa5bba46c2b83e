"""The batching engine: plan a run, run it, recover from device faults."""

from .run import (load_task, RunStats, Run, find_images, start)

__all__ = ['load_task', 'RunStats', 'Run', 'find_images', 'start']
