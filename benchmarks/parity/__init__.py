"""Parity of RCSegNeXt's training and inference pipeline with the official one (nnU-Net v2.1.2 + batchgenerators v1,
what the paper's numbers come from), measured against the reference packages themselves in a separate environment
(`environment.py`; never a runtime or test dependency). Each part is a module runnable inside that environment as
`python -m benchmarks.parity.PART --json OUT.json`; `benchmarks/nnunet_parity.py` runs them all. docs/nnunet_parity.md
holds the results."""
