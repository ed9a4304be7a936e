#!/usr/bin/env python3
"""Make the live tests' fixtures: `python tests/support/make_fixtures.py OUT_DIR [--host a1111|forge]
[--family sd1,sdxl]` (see tests/support/fixtures/cli.py). Needs only torch and numpy, so a WebUI's
own venv python runs it."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from tests.support.fixtures.cli import main

    sys.exit(main())
