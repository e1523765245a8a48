"""Arrow schemas of the Parquet output: written explicitly, so that a shard whose notes have no evidence
or no edits has the same column types as every other shard (inference would give ``list<null>``)."""

from __future__ import annotations


def schema_for(mode: str):
    import pyarrow as pa

    evidence = pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())]))
    edits = pa.list_(pa.struct([("rule", pa.string()), ("action", pa.string()), ("codes", pa.list_(pa.string())),
                                ("reason", pa.string())]))
    flags = pa.list_(pa.string())
    if mode == "code":  # icdcoder.pipeline.CodedNote
        code = pa.struct([("code", pa.string()), ("system", pa.string()), ("description", pa.string()),
                          ("score", pa.float64()), ("suggested", pa.bool_()), ("evidence", evidence),
                          ("flags", flags)])
        return pa.schema([("id", pa.string()), ("threshold", pa.float64()), ("codes", pa.list_(code)),
                          ("edits", edits)])
    # icdcoder.prediction.Prediction
    code = pa.struct([("code", pa.string()), ("score", pa.float64()), ("evidence", evidence), ("flags", flags)])
    return pa.schema([("id", pa.string()), ("codes", pa.list_(code)), ("scored", pa.bool_()), ("edits", edits)])
