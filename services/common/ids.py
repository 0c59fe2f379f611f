"""Resource ids as the registry takes them, and how many models one watch may name:
shared so that a client (a worker's --models) is checked at start the way the
registry would check it, instead of being refused later and retrying forever."""

from __future__ import annotations

import re

# Model, worker and other resource ids.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Most models one watch may name (a request of this many names is still small).
MAX_WATCH_MODELS = 1000
