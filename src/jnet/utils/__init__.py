"""Helpers every stage uses: atomic file output (``atomic``) and option look-up with did-you-mean (``options``)."""
