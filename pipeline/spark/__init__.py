"""Everything that touches Spark: the session, table I/O, the `mapInPandas` adapter and the
output columns, planning (resume, changes, chunks), the job loop, the lease, the summary."""
