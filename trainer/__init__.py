"""Two-stage continual pre-training (DeepSpeed ZeRO-1). Imports torch, transformers, deepspeed; never pyspark.

Reads the contract Parquet datasets that the selection and synthesis stages write (``trait.contract``).
"""
