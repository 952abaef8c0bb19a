"""``raygenre label``: one row per audio file of a library, through a Ray Data pipeline.

    scan.py      find the files (a streaming, sharded walk), skipping those already labelled     pure
    predict.py   decode a batch (decoder child, time limit) -> MFCC windows; Predictor -> rows   pure
    parts.py     output parts, one consolidated file, resume state and the run lock             pure
    pipeline.py  the Ray Data pipeline and ``label_library``, the entry point                  Ray

The package itself imports nothing, so ``raygenre.label.scan`` and friends load without Ray.
"""
