"""The slice cache: its on-disk schema, building it (``build``), reading it (``reader``) and the
patient-level splits (``splits``). No Lightning in here.
"""
