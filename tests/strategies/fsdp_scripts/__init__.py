"""Scripts and models for the FSDP, model-parallel and sharded-checkpoint tests."""
