"""``cifarlab reproduce``: re-train from a published record and say whether its figure holds up.

- :mod:`.source`: what is reproduced (a run, a ``result.json``, a study folder, a Hub repo or a folder in its layout);
- :mod:`.audit`: the record checked against itself and against the data, code and environment here;
- :mod:`.retrain`: the study of the recorded configs that the study runner trains;
- :mod:`.verdict`: same seed image by image (exact McNemar), a prediction interval across seeds, a study's verdicts;
- :mod:`.record` and :mod:`.render`: ``reproduce.json`` and its Markdown summary;
- :mod:`.commands`: the command line.

Nothing here imports torch or ``datasets`` at import time; the audit imports neither unless it reads data.
"""
