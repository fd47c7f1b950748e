#!/usr/bin/env bash
# The fast lane for everyday work: every test not marked `slow` (under 3 minutes on 2 cores);
# CI runs everything (scripts/test.sh). More arguments go to pytest.
exec bash "$(dirname "$0")/test.sh" -m "not slow" "$@"
