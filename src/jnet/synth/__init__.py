"""The built-in synthetic datasets (``generate.synthesize``), written in a published layout."""
