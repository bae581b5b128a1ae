"""Whole runs of the pipeline: ``lapo demo`` (:mod:`.demo`) and ``lapo reproduce``
(:mod:`.reproduce`)."""
