"""The built-in SYNTHETIC dataset: procedural audio in the exact GTZAN layout. It is NOT real music.

The real GTZAN cannot be downloaded everywhere (and is not ours to ship), so the demo, the tests and the
benchmarks run on audio generated here:

* ``synthesize`` writes ``genres_original/<genre>/<genre>.000NN.wav`` (22050 Hz mono PCM_16, like the Kaggle
  copy), ``SYNTHETIC.md`` (what this is) and ``synth.json`` (the config; written last, it marks completion).
  With ``faults`` on it reproduces GTZAN's real faults: an undecodable ``jazz.00054.wav``, a truncated file
  and lengths that vary around the nominal one.
* ``make_library`` writes a user-like music collection (nested artist/album folders, stereo, mixed sample
  rates and formats, a few broken files) for ``raygenre label``, with the ground truth in ``library.json``.

Every genre is a ``Recipe``: ranges for tempo, swing, drum patterns, timbres, harmony, distortion, noise and
dynamics. Each track draws its own values from its genre's ranges, and the ranges overlap between genres,
so the genres are learnable but not trivially separable (a logistic regression on MFCC statistics gets
roughly 55-85 %, far from 100 %).

Determinism: each file's random generator is seeded from ``(seed, genre, index)`` (or ``(seed, file)``),
never from process order, so any number of worker processes writes byte-identical files.

Speed: a track is a few rendered *phrases* (one pass of its chord progression: drums, bass, chords, lead as
separate stems) overlap-added along the timeline, then a per-sample master chain (dynamics, hiss, tone
filter) applied chunk by chunk. Everything per sample is vectorised numpy; Python loops run per note.
"""

# recipes -> dsp -> compose -> dataset (synthesize) -> library (make_library): import from those modules.
