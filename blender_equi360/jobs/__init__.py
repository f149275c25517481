"""The contract between the add-on, the engine, the farm and the tools: the job format (``job.json``), the
engine's events, long clips' window plan and record, the engine client, batches, atomic writes, frame
counts and canvas sizes. Standard library only, so every side can use it without PyAV or numpy."""
