"""Notes, datasets and the loaders that turn each source into them."""

from icdcoder.data.note import Dataset, Note, Span, canonical_split
from icdcoder.data.store import DatasetWriter, iter_notes, load_dataset, read_manifest, write_dataset

__all__ = ["Dataset", "Note", "Span", "canonical_split", "DatasetWriter", "iter_notes", "load_dataset",
           "read_manifest", "write_dataset"]
