"""The built-in synthetic datasets (``generate.synthesize``), written in a published layout."""

#: The datasets ``jnet data synth --kind`` writes (the order is part of each case's random stream).
KINDS = ("prostate", "brats", "brain")
