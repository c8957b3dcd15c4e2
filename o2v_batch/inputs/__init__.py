"""Reading requests: what comes before a worker.

formats.py names the content types and reads jsonlines (Lines, Blocks of plain
lines, oversize records); jsonstream.py splits a JSON document's `instances` without
loading it whole, moving through its values with jsonscanner.py; jsonpath.py is
--input-filter / --output-filter and --join-source; batching.py packs records into
mini-batches capped by --max-payload and shares a heavy one out in pieces;
token_ids.py checks each input's token ids and reads plain records straight from
their bytes.

May import `model` (TokenIds), `io` and `errors`; never the execution layer, the
engines, the jobs or the command line.
"""
