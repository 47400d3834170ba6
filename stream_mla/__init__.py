"""stream-mla: attention workloads (MHA, DeepSeek MLA) for the Stream and ZigZag accelerator engines."""

__version__ = "0.1.0"
