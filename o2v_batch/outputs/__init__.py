"""Writing responses: the only code that builds response bytes.

codec.py is the interface every format implements (Codec: encode a mini-batch's
responses into one fragment; Framer: frame a shard's fragments into its output);
responses.py holds the JSON text codecs, picks a codec for an --accept type and lays
out a columnar type's columns; columnar.py is .npy and the rows it shares with
parquet.py (pyarrow).

May import `inputs` (content types), `model` (the layout's widths), `io` and
`errors`; never config, the execution layer, the engines or the command line.
"""
