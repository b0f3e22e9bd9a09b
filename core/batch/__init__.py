"""Archive-scale batch analysis: one engine with a local and a Ray Data back-end, its Parquet shards, and reading a
result back (with an optional labels CSV).

batch_engine   the engine and its CLI (python -m core.batch.batch_engine)
batch_shards   which images go together and the analysis of one shard
batch_results  a batch result read back and evaluated against labels
"""
