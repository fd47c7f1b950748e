"""Names of the environment layer, without pydantic-settings (which config.settings imports).

Resolution reads these on every run; pydantic-settings (and the asyncio it imports) is
loaded only when there is something for it to read: a PUNIE_ profile variable or --set.
"""

from __future__ import annotations

from punie.envvars import NON_PROFILE_KEYS, PREFIX

ENV_PREFIX = PREFIX
ENV_DELIMITER = "__"
# PUNIE_ variables that are not profile fields (read elsewhere, never an error here).
NON_PROFILE_ENV = NON_PROFILE_KEYS  # one home: punie.envvars
FILE_ONLY_FIELDS = frozenset({"extends"})
