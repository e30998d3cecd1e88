"""The semantic cache: storage (LMDB + audio files), keys, reuse decisions."""
