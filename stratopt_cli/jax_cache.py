"""JAX's persistent compilation cache for the solver processes (``stratopt serve --jax-cache-dir``).

The batched active set (``services.optimization._batch``) and the risk-parity solver compile one XLA executable per
problem size bucket and precision on first use: about 20 s for the sizes of a batch of 12..50 names, paid by each
worker process after every start. With a cache directory, XLA writes each executable there and a later process
(the pool's other workers, a restarted worker, the next deployment on the same volume) loads it instead: the
first batched call in a fresh process went from 47.8 s to 4.1 s in one measurement on a loaded 2-core machine
(``benchmarks/batch.py`` problems; the rest is tracing and loading).

The settings travel as JAX's own environment variables, so the worker processes the pool starts afterwards read
them when they import JAX; a process that has imported JAX already is updated through ``jax.config``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["configure_jax_cache", "default_jax_cache_dir"]


def default_jax_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stratopt/jax`` (``~/.cache/stratopt/jax`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stratopt" / "jax"


def configure_jax_cache(directory: Path | None) -> Path | None:
    """Send this process's and its future children's XLA executables to ``directory`` (None: no cache).

    Parameters
    ----------
    directory : Path or None
        Where the executables go (created if missing); None leaves JAX's settings as they are.

    Returns
    -------
    Path or None
        The directory in use, or None when there is none (not asked for, or it cannot be created: the service then
        runs without the cache, and ``stratopt serve`` logs a warning).
    """
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    settings = {
        "jax_compilation_cache_dir": str(directory),
        # Every executable: each bucket compiles in about a second, under JAX's default threshold of 1 s.
        "jax_persistent_cache_min_compile_time_secs": "0",
    }
    for name, value in settings.items():
        os.environ[name.upper()] = value
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(directory))  # type: ignore[no-untyped-call]
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # type: ignore[no-untyped-call]
    return directory
