"""The one way a set of named fields is hashed into a stable identifier (series keys, environment fingerprints).

The canonical form is compact JSON with sorted keys; changing it would split every series a history holds,
so a field added later must be left out of the hashed mapping while it has no value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def canonical_digest(fields: Mapping[str, object], length: int) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``fields`` as sorted, compact JSON."""
    canonical = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
