"""Offline batch work on Ray Data: top-K lists for every user (``rayrec recommend``)."""
