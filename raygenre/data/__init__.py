"""Audio -> MFCC -> the feature table: decoding, MFCC, dataset discovery, the table contract, featurize, synth."""
