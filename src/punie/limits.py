"""THE numbers Punie's modules share (one home per fact): the stop grace, the read cap, the I/O chunk.

A number that more than one module needs lives here and is imported; tests/core/test_one_home.py fails
when its literal comes back elsewhere in src/punie.
"""

from __future__ import annotations

#: Seconds between SIGTERM and SIGKILL when a server (or the orphan guard) is stopped.
STOP_GRACE = 5.0

#: The same for a command the agent ran, and for orphans a supervisor adopted: they hold no model.
COMMAND_GRACE = 0.5

#: Most bytes the agent's read_file returns from one file (the profile's ``agent.max_read_bytes``).
MAX_READ_BYTES = 1 << 20

#: The cap of small files read whole: a cache file, /proc/PID/cmdline or /proc/PID/environ.
SMALL_FILE_BYTES = 1 << 20

#: The block size of streamed copies and hashes (1 MiB): large enough to be fast, small enough to
#: keep memory flat on multi-gigabyte weights.
CHUNK_BYTES = 1 << 20
