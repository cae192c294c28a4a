"""Lets the tests import ``rayrec_text`` from a checkout before it is installed.

pytest puts the folder holding a root-level conftest.py on ``sys.path``; once the package is
pip-installed this file changes nothing.
"""
