"""Puts the repository root on sys.path, so tests import `lib_autolora` and `tests.support` as packages."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
