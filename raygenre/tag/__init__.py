"""``raygenre tag`` and ``raygenre playlists``: a label table written into files' genre tags (with an undo
journal) and one M3U playlist per genre. The package ``__init__`` imports nothing.

    tags.py       read, set and delete the genre and confidence tags of one file (mutagen), per format
    apply.py      a tag run over a label table, its journal, dry run and undo
    playlists.py  one extended M3U per genre, written atomically, with a manifest of what raygenre wrote
"""
